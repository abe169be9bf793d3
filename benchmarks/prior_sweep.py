"""Exact LLA on the overconfident Fashion-MNIST CNN over a grid of prior precisions (a diagnostic).

Tells prior tuning from structure: if no ``α`` lets exact full-network LLA reach the deep ensemble's
κ-adic joint log-likelihood on the test set, EM's choice of ``α`` is not what keeps it behind. The
grid is scored on the test set itself, so its best entry is an oracle, not a method.

Needs the classification benchmark's overconfident run first (its MAP and the GGN cache of its
``exact`` row in ``results/fashion-mnist-cnn-overconfident/checkpoints``). Per ``α``: one Cholesky
factorisation of ``H = M + αI`` (g-prior coordinates, ``D = 20,490``) and 32 samples from the
benchmark's noise seed. Writes ``results/prior_sweep.{json,md}``. Run:
``OMP_NUM_THREADS=1 python benchmarks/prior_sweep.py``.
"""

from __future__ import annotations

import json
import time

import torch
from _report import RESULTS, markdown_table, write

import linearised_laplace as lla
from linearised_laplace.experiments import classification as bench

GRID = (30.0, 100.0, 1000.0, 3000.0)  # and the sampled row's EM α, for the fidelity table
OUT = RESULTS / "fashion-mnist-cnn-overconfident"
COLUMNS = ["α", "logit variance", "confidence", "NLL", *(f"joint LL κ={k}" for k in bench.KAPPAS)]


def main() -> None:
    settings = bench.Settings(
        dataset="fashion-mnist", model="cnn", n_train=10000, n_samples=32, epochs=100,
        weight_decay=0.0, mean_epochs=5, out=str(OUT),
    )  # fmt: skip
    sampled = _row("sampled")
    grid = sorted({*GRID, *([sampled["prior_precision"][0]] if sampled else [])})
    data = bench.load_data(settings)
    net = bench.trained_model(settings, data, settings.seed)
    cache = (
        OUT / "checkpoints" / f"{bench.network_tag(settings, settings.seed)}-exact-ggn.safetensors"
    )
    la = lla.ExactLaplace(
        net, g_prior=True, prior_precision=grid[0], ggn_cache=cache, n_samples=32,
        exclude_norm=True, progress=False,
    ).fit(data.train)  # fmt: skip
    model, ggn = la.posterior.model, la.posterior.ggn
    x, y = data.test
    rows = []
    for alpha in grid:
        start = time.process_time()
        if alpha != grid[0]:  # refactorised from the same GGN, samples from the same noise
            current, _ = model.at(torch.tensor([alpha], dtype=torch.float64), 1.0)
            la.posterior.fit(current, la.n_samples, la.seed, False, ggn)
        with torch.no_grad():
            row = {"α": alpha, **bench.score(la.predictive_samples(x), y)}
        row["CPU [s]"] = time.process_time() - start
        rows.append(row)
        print(json.dumps(row))
    reference = []
    for name in ("map", "ensemble", "sampled", "exact"):
        if (r := _row(name)) is not None:
            alpha = r.get("prior_precision", [None])[0]
            reference.append({"α": name if alpha is None else f"{name} ({alpha:.4g})", **r})
    markdown = "\n".join(
        [
            "# Exact LLA over a grid of prior precisions: the overconfident Fashion-MNIST CNN",
            "",
            "Test-set scores (so the best row is an oracle α, not a method); 32 exact samples per α "
            "from one noise seed, g-prior, full network (D = 20,490). The benchmark's rows for "
            "reference below.",
            "",
            markdown_table(rows, [*COLUMNS, "CPU [s]"]),
            "",
            "Benchmark rows (`methods/*.json`, α from EM):",
            "",
            markdown_table(reference, COLUMNS),
            *_fidelity(sampled, rows),
        ]
    )
    write("prior_sweep", {"grid": rows, "reference": reference}, markdown)


def _row(name: str) -> dict | None:
    path = OUT / "methods" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fidelity(sampled: dict | None, rows: list[dict]) -> list[str]:
    """Sampled LLA against exact LLA at the sampled row's α (same network, same noise seed)."""
    if sampled is None:
        return []
    alpha = sampled["prior_precision"][0]
    exact = next(r for r in rows if r["α"] == alpha)
    table = [
        {"": k, "sampled": sampled[k], "exact": exact[k], "relative difference": sampled[k] / exact[k] - 1}
        for k in COLUMNS[1:]
    ]  # fmt: skip
    return [
        "",
        f"Fidelity: the `sampled` row against exact LLA at its EM α = {alpha:.4g} (same network, "
        "prior and noise seed; they differ only by the sampler's error):",
        "",
        markdown_table(table, ["", "sampled", "exact", "relative difference"]),
    ]


if __name__ == "__main__":
    main()
