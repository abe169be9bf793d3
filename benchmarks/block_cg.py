"""Block CG against one CG per sample: iterations, seconds and the samples' error, same noise.

For every solver-fidelity problem (and, with ``--network``, a classification benchmark's MAP at
the α its ``sampled-default`` row converged to), ``SampledLaplace`` draws ``K`` samples with CG
preconditioned by the default rank-100 Nyström sketch, once with one CG per sample and once with
block CG (``lla.CG(block=True)``), from the same noise. ``steps``: iterations to the tolerance;
``solve [s]``: the sample solve's wall seconds (the rest of the fit is the same for both);
``own error``: the mean functional variance against exact samples of the same noise (up to 5,000
weights), else against the per-sample CG's (``vs CG``, its per-point mean relative difference in
``point``). Writes ``results/block_cg.{json,md}`` (``--network``: ``block_cg-<network>``).

    python benchmarks/block_cg.py [--problems a,b] [--samples 8,32]
    python benchmarks/block_cg.py --network fashion-mnist-cnn/seed-0 --samples 32
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from _report import markdown_table, write
from fidelity_problems import PROBLEMS, function_samples, mean_variance, sample_variance
from solver_fidelity import fit, point_error, relative

import linearised_laplace as lla

EXACT_UP_TO = 5_000
COLUMNS = [
    "problem", "D", "K", "solver", "steps", "converged", "worst residual", "solve [s]",
    "own error", "vs CG", "point",
]  # fmt: skip


def row(problem: str, la, variance, same_noise, per_sample, name: str, k: int) -> dict:
    """A results row of fit ``la`` (its mean functional ``variance`` ``[N]``)."""
    info = la.solve_info
    return {
        "problem": problem,
        "D": la.n_params,
        "K": k,
        "solver": name,
        "steps": info.n_steps,
        "converged": bool(info.converged),
        "worst residual": float(info.rel_residual.max()),
        "solve [s]": info.wall_time,
        "own error": None if same_noise is None else relative(variance, same_noise),
        "vs CG": None if per_sample is None else relative(variance, per_sample),
        "point": None if per_sample is None else point_error(variance, per_sample),
    }


def compare(name: str, fit_with, x_test, k: int, same_noise=None) -> list[dict]:
    """Per-sample CG, then block CG, each fitted by ``fit_with(solver, k)``."""
    rows, per_sample = [], None
    for label, block in (("CG", False), ("block CG", True)):
        la = fit_with(lla.CG(block=block), k)
        variance = mean_variance(la, x_test)
        rows.append(row(name, la, variance, same_noise, per_sample, label, k))
        per_sample = variance if per_sample is None else per_sample
        del la  # a fit holding Φ: one at a time
        print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    return rows


def problem_rows(problem, k: int) -> list[dict]:
    """Both solvers on one fidelity problem, against exact samples where ``D`` allows."""
    same_noise = None
    if sum(p.numel() for p in problem.model.parameters()) <= EXACT_UP_TO:
        exact, _, _ = fit(problem, None, k, lla.ExactLaplace)
        same_noise = sample_variance(function_samples(exact, problem.x_test))

    def fit_with(solver, n_samples):
        return fit(problem, solver, n_samples, space="primal")[0]

    return compare(problem.name, fit_with, problem.x_test, k, same_noise)


def network_rows(folder: str, k: int) -> list[dict]:
    """Both solvers on a classification benchmark's MAP at its default row's α."""
    from em_rtol import network

    from linearised_laplace.experiments.classification import DEFAULT_MEMORY_GIB

    net, data, alpha = network(folder)
    x_test = data.test[0][:500]

    def fit_with(solver, n_samples):
        la = lla.SampledLaplace(
            net, prior_precision=alpha, n_samples=n_samples, seed=0, solver=solver,
            exclude_norm=True, memory_gib=DEFAULT_MEMORY_GIB, progress=False,
        )  # fmt: skip
        return la.fit(data.train)

    return compare(folder, fit_with, x_test, k)


def summary(rows: list[dict]) -> str:
    """Per problem and ``K``: the iteration and time ratios of block CG to per-sample CG."""
    lines = []
    for key in dict.fromkeys((r["problem"], r["K"]) for r in rows):
        pair = {r["solver"]: r for r in rows if (r["problem"], r["K"]) == key}
        cg, block = pair["CG"], pair["block CG"]
        lines.append(
            f"- {key[0]}, K = {key[1]}: {block['steps']} block iterations against {cg['steps']} "
            f"({block['steps'] / cg['steps']:.2f}×), solve {block['solve [s]']:.3g} s against "
            f"{cg['solve [s]']:.3g} s ({block['solve [s]'] / cg['solve [s]']:.2f}×)."
        )
    ratios = [
        b["steps"] / c["steps"]
        for c, b in zip(rows[::2], rows[1::2], strict=True)
        if c["steps"] > 2 and c["K"] == max(r["K"] for r in rows)
    ]
    if ratios:
        lines.append(
            f"- Median iteration ratio at K = {max(r['K'] for r in rows)} over problems where CG "
            f"took more than 2 iterations: {statistics.median(ratios):.2f}×."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(p for p in PROBLEMS if "fashion" not in p))
    parser.add_argument("--network", help="a classification seed folder under benchmarks/results")
    parser.add_argument("--samples", default="8,32", help="comma-separated K")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k in (int(s) for s in args.samples.split(",")):
            if args.network:
                rows += network_rows(args.network, k)
            else:
                for name in args.problems.split(","):
                    rows += problem_rows(PROBLEMS[name](), k)
    name = "block_cg" + (f"-{args.network.split('/')[0]}" if args.network else "")
    markdown = "\n".join(
        [
            f"# Block CG against one CG per sample{f' on `{args.network}`' if args.network else ''}",
            "",
            "`SampledLaplace` with CG preconditioned by the rank-100 Nyström sketch, per sample "
            "and as a block, from the same noise. `own error`: the mean functional variance "
            "against exact samples of the same noise; `vs CG` and `point`: against the "
            "per-sample CG's (mean, and per-point mean relative difference). `solve [s]`: the "
            "sample solve's wall seconds. Made by `benchmarks/block_cg.py`.",
            "",
            markdown_table(rows, COLUMNS),
            "",
            summary(rows),
        ]
    )
    write(name, {"rows": rows}, markdown)


if __name__ == "__main__":
    main()
