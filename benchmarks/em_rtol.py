"""How loosely EM's sample solves may stop: ``γ̂`` of one E-step by CG's relative residual.

On a classification benchmark network (a seed folder's MAP, retrained from its recorded settings),
at the α its committed ``sampled-default`` row converged to, one cold E-step of the library's
defaults (``SampledLaplace``, CG preconditioned by the rank-100 Nyström sketch, 8 samples,
``start="current"``) per noise seed and per ``em_rtol``. ``bias``: ``γ̂`` over that of the
tightest tolerance from the same noise, minus 1 (the solver's error alone); ``spread``: the
seeds' standard deviation of ``γ̂`` at the tightest tolerance over its mean (the Monte-Carlo
error the solver's must stay below). With ``--exact`` also exact ``γ`` from the dense GGN.
Writes ``results/em_rtol-<network>.{json,md}``.

    python benchmarks/em_rtol.py digits-cnn/seed-0 [--seeds 3] [--exact]
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from dataclasses import fields

from _report import RESULTS, markdown_table, method_result, write

import linearised_laplace as lla
from linearised_laplace.experiments.classification import (
    DEFAULT_MEMORY_GIB,
    Settings,
    load_data,
    trained_model,
)

RTOLS = (1e-2, 3e-3, 1e-3, 1e-4)


def network(folder: str):
    """The seed folder's MAP, its data, and its sampled-default row's α (``None``: no row)."""
    raw = json.loads((RESULTS / folder / "results.json").read_text())["settings"]
    kw = {f.name: raw[f.name] for f in fields(Settings) if f.name in raw}
    settings = Settings(**{**kw, "angles": tuple(kw["angles"])}, out=str(RESULTS / folder))
    data = load_data(settings)
    row = method_result(RESULTS / folder, "sampled-default")
    alpha = None if row is None else row["prior_precision"][0]
    return trained_model(settings, data, settings.seed), data, alpha


def e_step(la, train, **options) -> dict:
    """One E-step's γ̂, CG iterations and CPU seconds (EM will not converge in one step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lla.ConvergenceWarning)
        step = la.optimize_prior_precision(train, max_iter=1, start="current", **options)[1]
    return {"γ̂": step["gamma"][0], "CG steps": step["solve_steps"], "CPU [s]": step["cpu_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", help="a classification seed folder under benchmarks/results")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--exact", action="store_true", help="exact γ from the dense GGN too")
    args = parser.parse_args()
    net, data, alpha = network(args.folder)
    common = {"prior_precision": alpha, "n_samples": 2, "progress": False, "exclude_norm": True}
    common["memory_gib"] = DEFAULT_MEMORY_GIB
    exact = None
    if args.exact:
        exact = e_step(lla.ExactLaplace(net, **common), data.train)["γ̂"]
    rows = []
    for seed in range(args.seeds):
        for rtol in RTOLS:
            la = lla.SampledLaplace(net, seed=seed, **common)
            rows.append({"seed": seed, "em_rtol": rtol, **e_step(la, data.train, em_rtol=rtol)})
            print(rows[-1], flush=True)
    tight = {r["seed"]: r["γ̂"] for r in rows if r["em_rtol"] == RTOLS[-1]}
    for r in rows:
        r["bias"] = r["γ̂"] / tight[r["seed"]] - 1
        if exact is not None:
            r["γ̂ / exact − 1"] = r["γ̂"] / exact - 1
    spread = statistics.stdev(tight.values()) / statistics.fmean(tight.values())
    summary = [
        {
            "em_rtol": rtol,
            "mean bias": statistics.fmean(r["bias"] for r in rows if r["em_rtol"] == rtol),
            "mean CG steps": statistics.fmean(r["CG steps"] for r in rows if r["em_rtol"] == rtol),
            "mean CPU [s]": statistics.fmean(r["CPU [s]"] for r in rows if r["em_rtol"] == rtol),
        }
        for rtol in RTOLS
    ]
    name = args.folder.split("/")[0]
    exact_text = "" if exact is None else f" Exact γ from the dense GGN: {exact:.5g}."
    markdown = "\n".join(
        [
            f"# EM's solve tolerance on `{args.folder}` (D = {sum(p.numel() for p in net.parameters()):,})",
            "",
            f"One cold E-step of the library's defaults at α = {alpha:.4g} (the committed "
            f"`sampled-default` row's), 8 samples, {args.seeds} noise seeds per `em_rtol`. "
            "`bias`: γ̂ over that of the same noise at the tightest tolerance, minus 1 (the "
            f"solver's error alone); the seeds' Monte-Carlo spread of γ̂ there is {spread:.2%} "
            f"(standard deviation over mean).{exact_text} Made by `benchmarks/em_rtol.py`.",
            "",
            markdown_table(summary, list(summary[0])),
            "",
            "## Every E-step",
            "",
            markdown_table(rows, list(rows[0])),
        ]
    )
    payload = {"alpha": alpha, "exact γ": exact, "spread": spread, "summary": summary}
    write(f"em_rtol-{name}", {**payload, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
