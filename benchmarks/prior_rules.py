"""Which prior rule to trust: every candidate on a benchmark network, scored on held-out data.

The networks: Table 1's calibrated and overconfident Fashion-MNIST CNNs (``D = 20,490``, seed 0),
the demo's digits CNN (``D = 6,090``) and the LoRA benchmark's BERT adapters and head
(``D = 1,090``). Exact LLA from one dense GGN, with
two prior structures: an isotropic prior on the network's own weights (laplace-torch's) and the
g-prior (the seed paper's). Each ``(prior, α)`` gets 32 exact samples from one noise seed, scored
on the validation split and on the test split. The rules, each a ``(prior, α)``:

- ``validation grid, NLL`` and ``validation grid, joint LL κ=5``: the grid's best point on
  validation data, per prior and over both;
- ``EM, θ* mean``: EM with the MAP's weights as the mean (``mean="network"``, laplace-torch's rule;
  for a full GGN also the stationary point of its gradient marglik), ``α = γ(α)/‖θ*‖²`` solved
  exactly from the GGN's eigenvalues, per prior;
- ``EM, tangent mean`` (the seed paper's rule): the ``α`` of the benchmark's committed EM rows,
  with their EM's outcome;
- ``library EM`` (``--library``): ``SampledLaplace(net, "classification")`` as a user runs it,
  ``optimize_prior_precision(train, mean=...)`` to convergence, scored by its own predictive.

The validation oracle at each κ is the grid point best on validation data at that κ; a rule's
``Δ oracle`` is its test score minus the oracle's test score. The benchmark's peers' test scores
(the seed's ``methods/*.json``) are listed beside them.

Needs only the benchmarks' settings: the MAP, the GGN, its eigenvalues, each ``(prior, α)``'s
samples and each library EM are cached in the run's ``checkpoints``, so a rerun resumes. Run:
``OMP_NUM_THREADS=1 python benchmarks/prior_rules.py overconfident`` (or ``calibrated``,
``digits``, ``lora``),
then ``... overconfident --library`` (or ``--library=network``: that mean alone); ``--render``
rewrites the page from its JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from _report import RESULTS, committed, em_outcome, markdown_table, method_result, write
from safetensors.torch import load_file, save_file

import linearised_laplace as lla
from linearised_laplace.experiments import classification as bench
from linearised_laplace.experiments import lora
from linearised_laplace.experiments.timing import stopwatch
from linearised_laplace.model.noise import NoiseSource, draw_posterior_noise
from linearised_laplace.posteriors.gamma import eigen_gamma, fixed_point_precision
from linearised_laplace.solvers.cholesky import exact_samples

NETWORKS = {
    "overconfident": {
        "title": "the overconfident Fashion-MNIST CNN (100 epochs, no weight decay)",
        "out": RESULTS / "fashion-mnist-cnn-overconfident" / "seed-0",
        "settings": {"epochs": 100, "weight_decay": 0.0},
    },
    "calibrated": {
        "title": "the calibrated Fashion-MNIST CNN (20 epochs, weight decay 1e-4)",
        "out": RESULTS / "fashion-mnist-cnn" / "calibrated" / "seed-0",
        "settings": {"epochs": 20, "weight_decay": 1e-4},
    },
    "digits": {
        "title": "the demo's digits CNN (100 epochs, weight decay 1e-4)",
        "out": RESULTS / "digits-cnn" / "seed-0",
        "settings": {"dataset": "digits", "n_train": None, "epochs": 100, "weight_decay": 1e-4},
        "grid": (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0, 1e4),
    },
    "lora": {
        "title": "the LoRA BERT's adapters and head",
        "out": RESULTS / "lora",
        "grid": (1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0),
    },
}
TABLE1 = {"dataset": "fashion-mnist", "model": "cnn", "n_train": 10000, "n_samples": 32}
N_SAMPLES = 32
GRID = {
    "isotropic": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0),
    "g-prior": (0.3, 1.0, 10.0, 100.0, 1000.0),
}
EM_ROWS = {  # committed EM rows with the tangent mean, and their prior
    "sampled": "g-prior",
    "exact": "g-prior",
    "sampled-isotropic": "isotropic",
    "exact-isotropic": "isotropic",
}
LIBRARY_MEANS = ("network", "tangent")  # the library's sampled EM, every other setting its default
PEERS = ("map", "ensemble", "lt-kron-marglik", "lt-lastlayer-marglik", "lt-diag-marglik")
SPLITS = ("val", "test")
SCORES = ("NLL", *(f"joint LL κ={k}" for k in bench.KAPPAS))
CHUNK = 250  # images per Jacobian chunk: [250, 10, D] float32 is 20 MB per 1,000 weights


def main(network: str) -> None:
    """Score every ``(prior, α)`` of the grid and the rules on ``network`` and write its page."""
    problem = _problem(network)
    data, tag = problem.data, problem.tag
    la = lla.ExactLaplace(
        problem.net, g_prior=True, prior_precision=1.0, ggn_cache=f"{tag}-exact-ggn.safetensors",
        n_samples=N_SAMPLES, progress=False, **problem.options,
    )  # fmt: skip
    with stopwatch() as clock:
        la.fit(data.train)
    print(f"GGN and a first factor: {clock.timing.cpu_median:.0f} CPU s", flush=True)
    model, ggn = la.posterior.model, la.posterior.ggn
    la.posterior.factor = None  # the memory of one factor: each α below makes its own
    scale = la.scale.to(torch.float64)  # θ = s ⊙ θ̃: an isotropic α on θ is α s² on θ̃
    fixed = {
        "g-prior": _fixed_point(
            la.posterior.dense_ggn(model, eigenvalues=True)[1], la, scale, False
        ),
        "isotropic": _fixed_point(_isotropic_eigenvalues(tag, ggn, scale), la, scale, True),
    }
    print(f"EM with θ*: {json.dumps(fixed)}", flush=True)
    em_rows = {m: r for m in EM_ROWS if (r := method_result(problem.out, m)) is not None}
    grid = {p: NETWORKS[network].get("grid", alphas) for p, alphas in GRID.items()}
    entries = {(prior, alpha) for prior, alphas in grid.items() for alpha in alphas}
    entries |= {(prior, f["α"]) for prior, f in fixed.items()}
    entries |= {(EM_ROWS[m], r["prior_precision"][0]) for m, r in em_rows.items()}
    entries = sorted(entries)
    store = Path(f"{tag}-prior-rules-samples.safetensors")
    samples = load_file(str(store)) if store.exists() else {}
    todo = [entry for entry in entries if _key(*entry) not in samples]
    noise = draw_posterior_noise(model, N_SAMPLES, NoiseSource(la.seed)) if todo else None
    for prior, alpha in todo:  # one data pass (the noise) serves every α
        precision = alpha * (scale.square() if prior == "isotropic" else torch.ones(1))
        at = model.with_prior(model.prior.with_precision(precision))
        with stopwatch() as clock:
            zeta = exact_samples(at, ggn, noise)[1]
        samples[_key(prior, alpha)] = la.coordinates.to_parameters(zeta).contiguous()
        save_file(samples, str(store))
        print(f"{prior} {alpha:.4g}: samples in {clock.timing.cpu_median:.0f} CPU s", flush=True)
    del ggn, model
    la.posterior.forget()
    rows = _score(la, data, entries, samples)
    own = bench.score(_outputs(la, data.test[0]), data.test[1])  # the benchmark's MAP, retrained
    payload = {
        "network": network, "grid": rows, "fixed points": fixed, "D": int(scale.numel()),
        "n val": len(data.val[1]), "n test": len(data.test[1]),
        "map here": {k: own[k] for k in SCORES},
        "em rows": {m: em_outcome(r) | {"prior": EM_ROWS[m]} for m, r in em_rows.items()},
        "peers": {m: {k: r[k] for k in SCORES} for m in PEERS if (r := method_result(problem.out, m))},
    }  # fmt: skip
    _write(network, payload)


def library(network: str, means: tuple[str, ...] = LIBRARY_MEANS) -> None:
    """Add the library's own sampled EM with each of ``means`` and its predictive to the page."""
    problem = _problem(network)
    payload, made = committed(f"prior_rules-{network}")
    ran = payload.get("library em", {}) | {m: _library_em(problem, m) for m in means}
    payload["library em"] = {m: ran[m] for m in LIBRARY_MEANS if m in ran}
    _write(network, payload, made)


def _write(network: str, payload: dict, made: dict | None = None) -> None:
    """Write the payload, with its rules table and oracles derived, and its page."""
    payload = {**payload, "rules": rules(payload), "oracles": oracles(payload["grid"])}
    write(f"prior_rules-{network}", payload, page(payload), made=made)


@dataclass
class Problem:
    """A benchmark network: its data splits, MAP, checkpoint prefix, peers' folder, fit options."""

    data: SimpleNamespace  # train, val, test: (inputs, labels)
    net: torch.nn.Module
    tag: Path
    out: Path
    options: dict


def _problem(network: str) -> Problem:
    """``network``'s benchmark settings, data and MAP (trained once, or read from its cache)."""
    out = NETWORKS[network]["out"]
    if network == "lora":
        s = lora.LoraSettings(out=str(out))
        splits = lora.make_data(s)
        data = SimpleNamespace(train=splits["train"], val=splits["val"])
        data.test = splits["in-distribution"]
        net = lora.fine_tuned(s, splits, s.seed)
        options = {"parameters": lora.ADAPTERS, "seed": s.seed}
        return Problem(data, net, out / "checkpoints" / f"lora-s{s.seed}", out, options)
    settings = bench.Settings(**{**TABLE1, **NETWORKS[network]["settings"]}, out=str(out))
    data = bench.load_data(settings)
    net = bench.trained_model(settings, data, settings.seed)
    tag = out / "checkpoints" / bench.network_tag(settings, settings.seed)
    return Problem(data, net, tag, out, {"exclude_norm": True})


def _outputs(la, x) -> torch.Tensor:
    """The network's logits ``f(x; θ*)`` ``[1, N, C]``, through its linearisation."""
    lin = la.linearisation
    return lin.linearised_forward(lin.check_inputs(x), torch.zeros_like(lin.theta_star)[None])


def _score(la, data, entries, samples) -> list[dict]:
    """Each entry's scores on validation and test, from one Jacobian pass over both splits.

    The logits ``f(x; θ*) + J(x) ζ_s`` of every entry's samples come from the same ``J(x)`` chunk;
    the first entry's are checked against ``la.predictive_samples`` on 100 test images.
    """
    zeta = torch.cat([samples[_key(*e)] for e in entries]).T  # [D, E·S]
    lin = la.linearisation
    rows = [{"prior": p, "α": a} for p, a in entries]
    with stopwatch() as clock:
        for split in SPLITS:
            x, y = getattr(data, split)
            parts = []
            for start in range(0, len(x), CHUNK):
                xs = x[start : start + CHUNK]
                f = _outputs(la, xs)[0, ..., None]
                parts.append(f + lin.to_dense(lin.check_inputs(xs)) @ zeta)  # [N, C, E·S]
            logits = torch.cat(parts).unflatten(-1, (len(entries), N_SAMPLES))
            if split == "test":
                _check(la, x[:100], logits[:100, :, 0], samples[_key(*entries[0])])
            for k, row in enumerate(rows):
                scores = bench.score(logits[:, :, k].permute(2, 0, 1), y)
                row.update({f"{split} {name}": scores[name] for name in SCORES})
    print(f"scores: {clock.timing.cpu_median:.0f} CPU s", flush=True)
    return rows


def _check(la, x, logits, zeta) -> None:
    """The chunked logits equal the library's predictive at the same samples."""
    expected = la.linearisation.linearised_forward(la.linearisation.check_inputs(x), zeta)
    error = float((expected.permute(1, 2, 0) - logits).abs().max())
    scale = float(expected.abs().max())
    if error > 1e-4 * scale:
        raise AssertionError(f"chunked logits differ from the predictive by {error:.3g}")


def _library_em(problem: Problem, mean: str) -> dict:
    """The library's sampled EM, every default but ``mean`` (cached): α, record, CPU, scores.

    The scores are its own predictive's (32 samples). ``memory_gib`` holds ``Φ`` (7.6 GiB), as
    the default budget does on an idle machine.
    """
    data = problem.data
    path = Path(f"{problem.tag}-prior-rules-em-{mean}.json")
    if path.exists():
        return json.loads(path.read_text())
    la = lla.SampledLaplace(
        problem.net, "classification", n_samples=N_SAMPLES, memory_gib=9.5, progress=True,
        **{k: v for k, v in problem.options.items() if k != "exclude_norm"},
    )  # fmt: skip
    with stopwatch() as clock:
        history = la.optimize_prior_precision(data.train, mean=mean)
    with torch.no_grad():
        scores = {
            f"{split} {k}": v
            for split in SPLITS
            for k, v in bench.score(
                la.predictive_samples(getattr(data, split)[0]), getattr(data, split)[1]
            ).items()
            if k in SCORES
        }
    record = {
        **scores,
        "D": la.coordinates.dim,
        "mean": mean,
        "α": float(la.prior_precision.mean()),
        "converged": bool(history[-1].get("converged")),
        "steps": len(history) - 1,
        "CPU [s]": clock.timing.cpu_median,
        "alphas": [h["prior_precision"][0] for h in history],
    }
    path.write_text(json.dumps(record, indent=1))
    return record


def _isotropic_eigenvalues(tag: Path, ggn, scale) -> torch.Tensor:
    """Eigenvalues of the GGN in the network's own weights, ``diag(1/s) M diag(1/s)`` (cached)."""
    path = Path(f"{tag}-isotropic-eigenvalues.safetensors")
    if path.exists():
        return load_file(str(path))["eigenvalues"]
    inverse = scale.reciprocal()
    values = torch.linalg.eigvalsh(ggn * inverse[:, None] * inverse[None, :]).clamp_min(0)
    save_file({"eigenvalues": values}, str(path))
    return values


def _fixed_point(eigenvalues, la, scale, isotropic: bool) -> dict:
    """EM with ``θ*`` as the mean: ``α = γ(α)/‖θ*‖²`` for an isotropic ``α`` in these coordinates."""
    anchor = la.coordinates.anchor().double()
    norm = float((anchor * scale).square().sum() if isotropic else anchor.square().sum())
    alpha = fixed_point_precision(eigenvalues, norm)
    return {"α": alpha, "γ": float(eigen_gamma(eigenvalues.double(), alpha)), "‖θ*‖²": norm}


def _key(prior: str, alpha: float) -> str:
    return f"{prior}|{alpha!r}"


def rules(payload: dict) -> list[dict]:
    """Every rule's ``(prior, α)`` and test scores, with its distance from the validation oracle."""
    grid = payload["grid"]
    found = []
    for prior in ("isotropic", "g-prior", None):
        pool = [r for r in grid if prior in (None, r["prior"])]
        which = prior or "either prior"
        for score in ("NLL", "joint LL κ=5"):
            sign = -1 if score == "NLL" else 1
            best = max(pool, key=lambda r: sign * r[f"val {score}"])
            note = "at the grid's edge" if _at_edge(grid, best) else ""
            found.append({"rule": f"validation grid, {score} ({which})", **best, "note": note})
    for prior, point in payload["fixed points"].items():
        row = _at(grid, prior, point["α"])
        found.append({"rule": f"EM, θ* mean ({prior})", **row, "note": "exact fixed point"})
    for method, em in payload["em rows"].items():
        row = _at(grid, em["prior"], em["α"])
        state = "converged" if em["converged"] else "unconverged"
        found.append(
            {
                "rule": f"EM, tangent mean (`{method}` row)",
                **row,
                "note": f"EM {state} after {em['steps']} steps",
            }
        )
    for mean, em in payload.get("library em", {}).items():
        state = "converged" if em["converged"] else "unconverged"
        found.append(
            {
                "rule": f"library EM, sampled, mean={mean!r} (isotropic)",
                "prior": "isotropic",
                **em,
                "note": f"EM {state} after {em['steps']} steps, {em['CPU [s]']:.0f} CPU s; its own predictive",
            }
        )
    for kappa in bench.KAPPAS:
        oracle = oracles(grid)[kappa]
        for row in found:
            column = f"joint LL κ={kappa}"
            row[f"Δ oracle κ={kappa}"] = row[f"test {column}"] - oracle[f"test {column}"]
    return found


def oracles(grid: list[dict]) -> dict[int, dict]:
    """At each κ, the grid point best on validation data (both priors), and if at the grid's edge."""
    best = {k: max(grid, key=lambda r: r[f"val joint LL κ={k}"]) for k in bench.KAPPAS}
    return {k: {**r, "at the grid's edge": _at_edge(grid, r)} for k, r in best.items()}


def _at_edge(grid: list[dict], row: dict) -> bool:
    """Whether ``row``'s α is its prior's smallest or largest on the grid."""
    alphas = sorted(r["α"] for r in grid if r["prior"] == row["prior"])
    return row["α"] in (alphas[0], alphas[-1])


def _at(grid: list[dict], prior: str, alpha: float) -> dict:
    return next(r for r in grid if r["prior"] == prior and r["α"] == alpha)


def page(payload: dict) -> str:
    """The markdown page of a payload."""
    title = NETWORKS[payload["network"]]["title"]
    test = [f"test {s}" for s in SCORES]
    deltas = [f"Δ oracle κ={k}" for k in bench.KAPPAS]
    oracle_rows = [
        {"κ": k, "prior": r["prior"], "α": r["α"], "val": r[f"val joint LL κ={k}"],
         "test": r[f"test joint LL κ={k}"], "at the grid's edge": r["at the grid's edge"]}
        for k, r in payload["oracles"].items()
    ]  # fmt: skip
    listed = {**payload["peers"], "map (retrained here)": payload["map here"]}
    peers = [{"method": m, **{f"test {s}": v for s, v in r.items()}} for m, r in listed.items()]
    return "\n".join(
        [
            f"# Prior rules on {title}, chosen on held-out data",
            "",
            f"Exact LLA over D = {payload['D']:,} weights from one dense GGN, seed 0, with an "
            "isotropic prior on the network's own weights or the g-prior; 32 exact samples per "
            f"(prior, α) from one noise seed, scored on the validation split ({payload['n val']:,} "
            f"points) and the test split ({payload['n test']:,}). A rule "
            "picks a (prior, α) without the test set; `Δ oracle κ=k` is its test κ-adic joint LL minus "
            "that of the grid point best on validation data at κ = k (the validation oracle). "
            "`EM, θ* mean` is exact EM's fixed point with the MAP's weights as the mean (laplace-torch's "
            "rule; for a full GGN also its gradient marglik's stationary point). `EM, tangent mean` "
            "takes the α of the benchmark's committed EM row, converged or not as its EM says. Made by "
            "`benchmarks/prior_rules.py`.",
            "",
            "## Rules (test scores)",
            "",
            markdown_table(payload["rules"], ["rule", "prior", "α", "note", *test, *deltas]),
            "",
            "## Validation oracle",
            "",
            markdown_table(oracle_rows, ["κ", "prior", "α", "val", "test", "at the grid's edge"]),
            "",
            "## The benchmark's peers on the same test split (seed 0, `methods/*.json`)",
            "",
            markdown_table(peers, ["method", *test]),
            "",
            "## Grid",
            "",
            markdown_table(payload["grid"], ["prior", "α", *(f"val {s}" for s in SCORES), *test]),
        ]
    )


if __name__ == "__main__":
    name = next((a for a in sys.argv[1:] if not a.startswith("--")), "overconfident")
    if chosen := [a for a in sys.argv[1:] if a.startswith("--library")]:
        library(
            name,
            tuple(chosen[0].partition("=")[2].split(",")) if "=" in chosen[0] else LIBRARY_MEANS,
        )
    elif "--render" in sys.argv[1:]:
        saved, made = committed(f"prior_rules-{name}")
        _write(name, saved, made)
    else:
        main(name)
