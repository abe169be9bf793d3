"""Exact LLA on the overconfident Fashion-MNIST CNN over a grid of prior precisions (a diagnostic).

Tells prior tuning from structure: if no ``α`` lets exact full-network LLA reach the deep ensemble's
κ-adic joint log-likelihood on the test set, EM's choice of ``α`` is not what keeps it behind. The
grid is scored on the test set itself, so its best entry is an oracle, not a method.

Needs the classification benchmark's overconfident run first (its MAP and the GGN cache of its
``exact`` row in ``results/fashion-mnist-cnn-overconfident/seed-0/checkpoints``). Per ``α``: one Cholesky
factorisation of ``H = M + αI`` (g-prior coordinates, ``D = 20,490``) and 32 samples from the
benchmark's noise seed. Each grid adds the α EM found for the ``sampled`` (g-prior) and
``sampled-isotropic(-mapmean)`` rows, for a fidelity table at the same α; the isotropic grid also
adds the exact fixed point of EM with the MAP's weights as the mean (from the ``exact-isotropic``
row's cached eigenvalues, where they exist). Rows already in ``results/prior_sweep.json`` for the
same prior and α are kept (delete it to rerun them). Writes ``results/prior_sweep.{json,md}``.
Run: ``OMP_NUM_THREADS=1 python benchmarks/prior_sweep.py``; ``--render`` rewrites the page from
its JSON and the benchmark's rows as they are now, without the network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from _report import RESULTS, committed, markdown_table, method_result, write
from safetensors import safe_open

import linearised_laplace as lla
from linearised_laplace.experiments import classification as bench
from linearised_laplace.experiments.report import em_outcome
from linearised_laplace.experiments.timing import stopwatch
from linearised_laplace.posteriors.gamma import eigen_gamma, fixed_point_precision

GRID = (30.0, 100.0, 1000.0)  # g-prior; and the sampled row's EM α, for the fidelity table
ISOTROPIC_GRID = (3.0, 10.0, 30.0, 100.0)  # an isotropic prior on the network's own weights
# benchmark rows whose EM α joins the grid of their prior, for a fidelity table at the same α
SAMPLED = {
    "sampled": "g-prior",
    "sampled-isotropic": "isotropic",
    "sampled-isotropic-mapmean": "isotropic",
}
OUT = RESULTS / "fashion-mnist-cnn-overconfident" / "seed-0"
TIMES = ("wall [s]", "CPU [s]")  # a grid row's cost, where it was timed
COLUMNS = [
    "prior",
    "α",
    "logit variance",
    "confidence",
    "NLL",
    *(f"joint LL κ={k}" for k in bench.KAPPAS),
]


def main(settings: bench.Settings | None = None, name: str = "prior_sweep") -> None:
    """Sweep ``settings``' network (default: the overconfident run's) and write ``name``."""
    settings = settings or bench.Settings(
        dataset="fashion-mnist", model="cnn", n_train=10000, n_samples=32, epochs=100,
        weight_decay=0.0, mean_epochs=5, out=str(OUT),
    )  # fmt: skip
    out = Path(settings.out)
    sampled = {m: row for m in SAMPLED if (row := method_result(out, m)) is not None}
    data = bench.load_data(settings)
    net = bench.trained_model(settings, data, settings.seed)
    tag = out / "checkpoints" / bench.network_tag(settings, settings.seed)
    map_mean = _map_mean_fixed_point(Path(f"{tag}-exact-isotropic-ggn.safetensors"), net)
    grid = {"g-prior": set(GRID), "isotropic": set(ISOTROPIC_GRID) | set(map_mean)}
    for method, row in sampled.items():
        grid[SAMPLED[method]].add(row["prior_precision"][0])
    grid = {prior: sorted(alphas) for prior, alphas in grid.items()}
    done = {(r["prior"], r["α"]): r for r in _previous(name)}
    cache = f"{tag}-exact-ggn.safetensors"
    entries = [(prior, alpha) for prior, alphas in grid.items() for alpha in alphas]
    todo = [entry for entry in entries if entry not in done]
    if todo:
        la = lla.ExactLaplace(
            net, g_prior=True, prior_precision=grid["g-prior"][0], ggn_cache=cache,
            n_samples=settings.n_samples, exclude_norm=True, progress=False,
        ).fit(data.train)  # fmt: skip
        model, ggn = la.posterior.model, la.posterior.ggn
        scale = la.scale.to(torch.float64)  # θ = s ⊙ θ̃: an isotropic α on θ is α s² on θ̃
    x, y = data.test
    for prior, alpha in todo:
        with stopwatch() as clock:  # once per α
            if (prior, alpha) != ("g-prior", grid["g-prior"][0]):  # the same GGN and the same noise
                precision = alpha * (scale.square() if prior == "isotropic" else torch.ones(1))
                at = model.with_prior(model.prior.with_precision(precision))
                la.posterior.fit(at, la.n_samples, la.seed, False, ggn, la.posterior.noise)
            with torch.no_grad():
                row = {"prior": prior, "α": alpha, **bench.score(la.predictive_samples(x), y)}
        timing = clock.timing
        done[prior, alpha] = row | {"wall [s]": timing.wall_median, "CPU [s]": timing.cpu_median}
        print(json.dumps(done[prior, alpha]), flush=True)
    rows = [done[entry] for entry in entries]
    map_mean = [{"α": a, "γ": g, "‖θ*‖²": n} for a, (g, n) in map_mean.items()]
    write(name, *page(out, rows, map_mean))


def page(out: Path, rows: list[dict], map_mean: list[dict]) -> tuple[dict, str]:
    """The payload and the page of the grid ``rows``, with the benchmark's rows as they are now."""
    sampled = {m: row for m in SAMPLED if (row := method_result(out, m)) is not None}
    reference = []
    for method in ("map", "ensemble", "sampled", "exact", "sampled-isotropic", "exact-isotropic"):
        if (r := method_result(out, method)) is not None:
            alpha = r.get("prior_precision", [None])[0]
            reference.append({**r, "prior": method, "α": alpha or "", "EM": em_outcome(r)})
    markdown = "\n".join(
        [
            "# Exact LLA over a grid of prior precisions: the overconfident Fashion-MNIST CNN",
            "",
            "Test-set scores (so the best row is an oracle α, not a method); 32 exact samples per α "
            "from one noise seed, full network (D = 20,490), from one dense GGN: with the g-prior "
            "(the benchmark's `exact` and `sampled` rows) and with an isotropic prior on the "
            "network's own weights (laplace-torch's, and the `-isotropic` rows'; its KFAC row learnt "
            "α = 18.5 so). The benchmark's rows for reference below.",
            "",
            markdown_table(rows, [*COLUMNS, *(c for c in TIMES if any(c in r for r in rows))]),
            "",
            "Benchmark rows (seed 0's `methods/*.json` as committed now, α from EM; the `EM` "
            "column says whether it converged, and an unconverged α is EM's last iterate, not its "
            "fixed point; `--render` rereads them):",
            "",
            markdown_table(reference, [*COLUMNS, "EM"]),
            "",
            *[
                f'Exact EM with the MAP\'s weights as the mean (`mean="network"`, the '
                f"`-mapmean` rows) has its fixed point α = γ(α)/‖θ*‖² at α = {m['α']:.4g} "
                f"(γ = {m['γ']:.4g}, ‖θ*‖² = {m['‖θ*‖²']:.4g}), from the eigenvalues of the "
                "`exact-isotropic` row's GGN."
                for m in map_mean
            ],
            *(line for m, row in sampled.items() for line in _fidelity(SAMPLED[m], row, rows)),
        ]
    )
    return {"grid": rows, "reference": reference, "map mean fixed point": map_mean}, markdown


def render(name: str = "prior_sweep") -> None:
    """Rewrite the page from its JSON and the benchmark's rows as committed now; run nothing."""
    payload, made = committed(name)
    new, markdown = page(OUT, payload["grid"], payload.get("map mean fixed point", []))
    write(name, new, markdown, made=made)


def _map_mean_fixed_point(cache: Path, net) -> dict[float, tuple[float, float]]:
    """``{α: (γ, ‖θ*‖²)}`` at ``α = γ(α)/‖θ*‖²`` under an isotropic prior (``{}`` without cache)."""
    if not cache.exists():
        return {}
    with safe_open(str(cache), "pt") as f:
        if "eigenvalues" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
            return {}
        eigenvalues = f.get_tensor("eigenvalues").double()
    norm = float(sum(p.detach().double().square().sum() for p in net.parameters()))
    alpha = fixed_point_precision(eigenvalues, norm)
    return {alpha: (float(eigen_gamma(eigenvalues, alpha)), norm)}


def _previous(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["grid"] if path.exists() else []


def _fidelity(prior: str, sampled: dict | None, rows: list[dict]) -> list[str]:
    """Sampled LLA against exact LLA at the sampled row's α (same network, same noise seed)."""
    if sampled is None:
        return []
    alpha = sampled["prior_precision"][0]
    exact = next(r for r in rows if r["α"] == alpha and r["prior"] == prior)
    table = [
        {
            "": k,
            "sampled": sampled[k],
            "exact": exact[k],
            "relative difference": sampled[k] / exact[k] - 1,
        }
        for k in COLUMNS[2:]
    ]
    return [
        "",
        f"Fidelity: the `{sampled['method']}` row against exact LLA at its EM α = {alpha:.4g} "
        f"(EM {em_outcome(sampled)}; {prior}; same network and prior, 32 samples each: they differ by the sampler's error "
        "and Monte-Carlo error):",
        "",
        markdown_table(table, ["", "sampled", "exact", "relative difference"]),
    ]


if __name__ == "__main__":
    if "--render" in sys.argv[1:]:
        render()
    else:
        main()
