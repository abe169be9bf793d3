"""Solver fidelity: sampled posteriors against exact inference, for every solver and the default.

For each problem of ``fidelity_problems`` the exact posterior (``ExactLaplace``, float64 dense) gives
the closed-form functional variance at test inputs and, for the same seed, exact samples of the same
noise. Each solver then draws ``S`` samples, and the table reports, on the mean (over test points)
of the functional variance's trace:

* ``err``: relative error against the closed form, next to ``mc``, the Monte-Carlo standard error
  of ``S`` samples (estimated from the exact same-noise samples);
* ``err_same_noise``: relative error against the exact samples of the same noise (solver error only);
* ``corr``: per-point correlation with the same-noise exact variances;
* the worst relative residual, SGD's worst error estimate (the residual in its preconditioner's
  inverse norm, which its tolerance applies to), whether a ``ConvergenceWarning`` fired, wall time,
  and the smallest budget (epochs or CG iterations) that reaches 10% error against the same noise.

``SGD-jacobi`` is SGD with the former default preconditioner (Jacobi, ``preconditioner_rank=0``);
``SDD`` is stochastic dual descent (always in the dual space).

``pass`` means ``|err| ≤ max(10%, 2 mc)`` and ``corr ≥ 0.9``. Run:
``python benchmarks/solver_fidelity.py [--problems a,b] [--solvers a,b] [--samples S] [--name NAME]``
(SDD: ``--solvers SDD --problems small-noise-mlp,sinusoid-n300,diabetes-mlp --name
solver_fidelity-sdd``); the
Fashion-MNIST CNN (D = 20.5k, exact from a 20.5k² dense GGN) runs on its own:
``--problems fashion-cnn-n2000 --samples 16 --name solver_fidelity-fashion``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import matplotlib
import torch
from _report import RESULTS, markdown_table, write
from fidelity_problems import PROBLEMS, Problem, mean_variance, monte_carlo_error
from torch.utils.data import DataLoader, TensorDataset

import linearised_laplace as lla

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SOLVERS = {
    "default": lambda budget=None: None,
    "SGD": lambda budget=None: lla.SGD() if budget is None else lla.SGD(n_epochs=budget),
    "CG": lambda budget=None: lla.CG() if budget is None else lla.CG(max_iter=budget),
    "SGD-jacobi": lambda budget=None: lla.SGD(preconditioner_rank=0),  # the former default
    # stochastic dual descent; space="auto" runs it in the dual, the only space it solves
    "SDD": lambda budget=None: lla.SDD() if budget is None else lla.SDD(n_epochs=budget),
}
BUDGETS = {
    "SGD": [1, 2, 5, 10, 20, 50, 100, 200],
    "CG": [1, 2, 5, 10, 20, 50, 100, 200, 500],
    "SDD": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
}
SMALL = 5_000  # parameters up to which budgets are scanned


def fit(problem: Problem, solver, n_samples: int, method=lla.SampledLaplace):
    """Fit ``method`` with ``solver``; returns it, the seconds and whether a warning fired."""
    kw = {"prior_precision": problem.prior_precision, "n_samples": n_samples, "seed": 0}
    if problem.likelihood == "regression":
        kw["sigma_noise"] = problem.sigma_noise
    if method is lla.SampledLaplace:
        kw["solver"] = "auto" if solver is None else solver
    loader = DataLoader(TensorDataset(*problem.train), batch_size=problem.batch_size)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        la = method(problem.model, problem.likelihood, progress=False, **kw).fit(loader)
    warned = any(issubclass(w.category, lla.ConvergenceWarning) for w in caught)
    return la, time.perf_counter() - start, warned


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.mean() / b.mean() - 1)


def budget_to_reach(problem, name, same_noise, n_samples, limit=0.1):
    """Smallest budget in ``BUDGETS[name]`` whose error against the same noise is within ``limit``."""
    for budget in BUDGETS[name]:
        la, _, _ = fit(problem, SOLVERS[name](budget), n_samples)
        if abs(relative(mean_variance(la, problem.x_test), same_noise)) <= limit:
            return budget
    return None


def run_problem(
    problem: Problem, n_samples: int, scan: bool, solvers: list[str] | None = None
) -> list[dict]:
    exact, exact_seconds, _ = fit(problem, None, n_samples, method=lla.ExactLaplace)
    closed = mean_variance(exact, problem.x_test)
    with torch.no_grad():
        exact_functions = exact.predictive_samples(problem.x_test) - exact.model(problem.x_test)
    same_noise = exact_functions.double().square().sum(-1).mean(0)
    mc = monte_carlo_error(exact_functions)
    rows = []
    for name in solvers or SOLVERS:
        la, seconds, warned = fit(problem, SOLVERS[name](), n_samples)
        variance = mean_variance(la, problem.x_test)
        err = relative(variance, closed)
        corr = float(torch.corrcoef(torch.stack([variance, same_noise]))[0, 1])
        info = la.solve_info
        row = {
            "problem": problem.name,
            "solver": name,
            "ran": f"{info.solver} ({info.space})",
            "D": la.n_params,
            "n": len(problem.train[0]),
            "err": err,
            "mc": mc,
            "err_same_noise": relative(variance, same_noise),
            "corr": corr,
            "corr_closed_form": float(torch.corrcoef(torch.stack([variance, closed]))[0, 1]),
            "worst_residual": float(info.rel_residual.max()),
            "worst_error_estimate": (
                None if info.error_estimate is None else float(info.error_estimate.max())
            ),
            "warned": warned,
            "seconds": seconds,
            "exact_seconds": exact_seconds,
            "steps": info.n_steps,
            "pass": abs(err) <= max(0.1, 2 * mc) and corr >= 0.9,
        }
        if scan and name in BUDGETS:
            row["budget_to_10pct"] = budget_to_reach(problem, name, same_noise, n_samples)
        rows.append(row)
        print(markdown_table([row], list(row)).splitlines()[-1], flush=True)
    return rows


def plot(rows: list[dict], path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"default": "o", "SGD": "s", "CG": "^", "SGD-jacobi": "x", "SDD": "D"}
    for problem in dict.fromkeys(r["problem"] for r in rows):
        colour = None
        for r in (r for r in rows if r["problem"] == problem):
            line = ax.scatter(
                r["seconds"],
                abs(r["err_same_noise"]) + 1e-4,
                marker=markers[r["solver"]],
                color=colour,
                label=problem if colour is None else None,
            )
            colour = line.get_facecolor()[0]
    ax.axhline(0.1, color="grey", ls="--", lw=1)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="wall time (s)",
        ylabel="|error| of mean variance vs exact samples",
        title="o default   □ SGD   △ CG   × SGD with Jacobi (the former default)   ◇ SDD",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(p for p in PROBLEMS if "fashion" not in p))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--name", default="solver_fidelity", help="results file name")
    parser.add_argument(
        "--only", action="store_true", help="re-run --problems and keep the other problems' rows"
    )
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated subset")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    if args.only and (RESULTS / f"{args.name}.json").exists():
        kept = json.loads((RESULTS / f"{args.name}.json").read_text())["rows"]
        rows = [
            r
            for r in kept
            if r["problem"] not in {PROBLEMS[p]().name for p in args.problems.split(",")}
        ]
    for name in args.problems.split(","):
        problem = PROBLEMS[name]()
        n_params = sum(p.numel() for p in problem.model.parameters())
        rows += run_problem(
            problem, args.samples, scan=n_params <= SMALL, solvers=args.solvers.split(",")
        )
    columns = [
        "problem", "solver", "ran", "D", "n", "err", "mc", "err_same_noise", "corr",
        "worst_residual", "worst_error_estimate", "warned", "seconds", "steps", "budget_to_10pct",
        "pass",
    ]  # fmt: skip
    plot(rows, RESULTS / f"{args.name}.png")
    text = (
        "# Solver fidelity against exact inference\n\n"
        f"{args.samples} samples; `err` against the closed-form variance (`mc`: its Monte-Carlo "
        "standard error), `err_same_noise` and `corr` against exact samples of the same noise. "
        "`pass`: |err| ≤ max(10%, 2 mc) and corr ≥ 0.9.\n\n" + markdown_table(rows, columns)
    )
    write(args.name, {"samples": args.samples, "rows": rows}, text)


if __name__ == "__main__":
    main()
