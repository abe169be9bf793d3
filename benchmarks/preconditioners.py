"""Preconditioners of the primal solvers, by the numbers: Jacobi, Nyström (rank 100) and KFAC.

For every solver-fidelity problem, CG in the primal space runs to its tolerance with each
preconditioner, and SGD runs its default epochs with Nyström; each is compared with exact
samples of the same noise (the solver's own error, as in ``solver_fidelity``). CG's iterations to
tolerance are the number the issue asks for; CPU seconds include building the preconditioner
(KFAC's factors, the Nyström sketch). Writes ``results/preconditioners.{json,md}``.

    python benchmarks/preconditioners.py [--problems a,b] [--samples 16]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _report import committed, kept, markdown_table, write
from fidelity_problems import PROBLEMS, function_samples, mean_variance, sample_variance
from solver_fidelity import fit, relative

import linearised_laplace as lla

SOLVERS = {
    "CG-jacobi": lambda: lla.CG(preconditioner_rank=0),
    "CG-nystrom": lambda: lla.CG(),
    "CG-kfac": lambda: lla.CG(preconditioner="kfac"),
    "SGD-nystrom": lambda: lla.SGD(),
}
"""``SGD-kfac`` rows in the committed results come from the commit before SGD's KFAC option was
withdrawn (its error estimate missed samples far off exact ones)."""
COLUMNS = [
    "problem", "solver", "D", "n", "steps", "converged", "err_same_noise", "corr",
    "worst_error_estimate", "warned", "CPU seconds", "exact CPU seconds",
]  # fmt: skip


EXACT_UP_TO = 5_000
"""Weights up to which exact samples are drawn to compare with (beyond: iterations and time only)."""


def run_problem(problem, n_samples: int, solvers: list[str]) -> list[dict]:
    same_noise, exact_timing = None, {"CPU [s]": None}
    if sum(p.numel() for p in problem.model.parameters()) <= EXACT_UP_TO:
        exact, exact_timing, _ = fit(problem, None, n_samples, lla.ExactLaplace)
        same_noise = sample_variance(function_samples(exact, problem.x_test))
    rows = []
    for name in solvers:
        solver = SOLVERS[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # KFAC's uncovered layers: in the row
            la, timing, warned = fit(problem, solver(), n_samples, space="primal")
        variance = mean_variance(la, problem.x_test)
        info = la.solve_info
        row = {
            "problem": problem.name,
            "solver": name,
            "D": la.n_params,
            "n": len(problem.train[0]),
            "steps": info.n_steps,
            "converged": bool(info.converged),
            "err_same_noise": None if same_noise is None else relative(variance, same_noise),
            "corr": None
            if same_noise is None
            else float(torch.corrcoef(torch.stack([variance, same_noise]))[0, 1]),
            "worst_error_estimate": (
                None if info.error_estimate is None else float(info.error_estimate.max())
            ),
            "warned": warned,
            "CPU seconds": timing["CPU [s]"],
            "exact CPU seconds": exact_timing["CPU [s]"],
        }
        rows.append(row)
        print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    """Per problem: CG's iterations with Nyström and with KFAC, and which needed fewer."""
    lines = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        steps = {
            r["solver"]: f"{r['steps']:,}" + ("" if r["converged"] else " (not converged)")
            for r in rows
            if r["problem"] == problem
        }
        ran = [
            f"{steps[solver]} with {label}"
            for solver, label in (
                ("CG-jacobi", "Jacobi"),
                ("CG-nystrom", "Nyström"),
                ("CG-kfac", "KFAC"),
            )
            if solver in steps
        ]
        lines.append(f"- {problem}: CG iterations to tolerance: {', '.join(ran)}.")
    return "\n".join(lines)


def page(samples: int, rows: list[dict]) -> str:
    """The results page of ``rows``."""
    return (
        "# Preconditioners of the primal solvers\n\n"
        f"{samples} samples per fit, every solver in the primal space. `steps`: CG's "
        "iterations to its tolerance, SGD's steps; `converged`: every sample reached the solver's "
        "tolerance; `err_same_noise` and `corr`: the error of the mean functional variance and "
        "the per-point correlation against exact samples of the same noise (up to "
        f"{EXACT_UP_TO:,} weights; beyond, `None`). CPU seconds include building the "
        "preconditioner, timed once.\n\n" + markdown_table(rows, COLUMNS) + "\n\n" + summary(rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(p for p in PROBLEMS if "fashion" not in p))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated subset")
    parser.add_argument(
        "--only", action="store_true", help="re-run --problems and keep the other problems' rows"
    )
    parser.add_argument(
        "--render", action="store_true", help="rewrite the results page from its JSON, run nothing"
    )
    args = parser.parse_args()
    if args.render:
        payload, made = committed("preconditioners")
        write("preconditioners", payload, page(payload["samples"], payload["rows"]), made=made)
        return
    torch.manual_seed(0)
    problems = [PROBLEMS[name]() for name in args.problems.split(",")]
    rows = kept("preconditioners", {p.name for p in problems}) if args.only else []
    for problem in problems:
        rows += run_problem(problem, args.samples, args.solvers.split(","))
    write("preconditioners", {"samples": args.samples, "rows": rows}, page(args.samples, rows))


if __name__ == "__main__":
    main()
