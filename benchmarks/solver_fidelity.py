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

A solver is judged by its own error (:data:`PASS_RULE`): the closed-form error also holds the
Monte-Carlo error of ``S`` samples, which is the same for every solver and says nothing about it.
Fits are timed by the benchmarks' protocol (``experiments.timing``): one warm-up and 3 repeats,
medians of wall and CPU seconds, where ``D ≤ 5,000``; once otherwise. Run:
``python benchmarks/solver_fidelity.py [--problems a,b] [--solvers a,b] [--samples S] [--name NAME]``
(SDD: ``--solvers SDD --problems small-noise-mlp,sinusoid-n300,diabetes-mlp --name
solver_fidelity-sdd``); the
Fashion-MNIST CNN (D = 20.5k, exact from a 20.5k² dense GGN) runs on its own:
``--problems fashion-cnn-n2000 --samples 16 --name solver_fidelity-fashion``. ``--render`` rewrites a
results page from its JSON (the pass rule applied anew) without running anything.
"""

from __future__ import annotations

import argparse
import warnings

import matplotlib
import torch
from _report import RESULTS, committed, kept, markdown_table, write
from fidelity_problems import (
    PROBLEMS,
    Problem,
    function_samples,
    mean_variance,
    monte_carlo_error,
    sample_variance,
)
from torch.utils.data import DataLoader, TensorDataset

import linearised_laplace as lla
from linearised_laplace.experiments.timing import measure, stopwatch

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
SMALL = 5_000  # parameters up to which budgets are scanned and fits timed with repeats
TOLERANCE, CORRELATION = 0.05, 0.95
PASS_RULE = (
    f"pass: the solver's own error (|own| against exact samples of the same noise) ≤ {TOLERANCE:.0%} "
    f"and the per-point correlation with them ≥ {CORRELATION}"
)


def passes(row: dict) -> bool:
    """:data:`PASS_RULE` for a results row."""
    return abs(row["err_same_noise"]) <= TOLERANCE and row["corr"] >= CORRELATION


def fit(
    problem: Problem, solver, n_samples: int, method=lla.SampledLaplace, repeats: int = 0, **options
):
    """Fit ``method`` with ``solver``; returns it, its timing record and whether a warning fired.

    ``repeats > 0`` times the fit by the protocol (a warm-up, then ``repeats``); 0 times it once.
    ``options``: more keywords of ``method`` (e.g. ``space``).
    """
    kw = {"prior_precision": problem.prior_precision, "n_samples": n_samples, "seed": 0, **options}
    if problem.likelihood == "regression":
        kw["sigma_noise"] = problem.sigma_noise
    if method is lla.SampledLaplace:
        kw["solver"] = "auto" if solver is None else solver
    loader = DataLoader(TensorDataset(*problem.train), batch_size=problem.batch_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def run():
            return method(problem.model, problem.likelihood, progress=False, **kw).fit(loader)

        if repeats:
            la, timing = measure(run, repeats=repeats)
        else:
            with stopwatch() as clock:
                la = run()
            timing = clock.timing
    warned = any(issubclass(w.category, lla.ConvergenceWarning) for w in caught)
    return la, timing.record(), warned


def point_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over points of ``|a − b| / b``: the per-point relative difference of variances."""
    return float(((a - b).abs() / b).mean())


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.mean() / b.mean() - 1)


def budget_to_reach(problem, name, same_noise, n_samples, limit=0.1):
    """Smallest budget in ``BUDGETS[name]`` whose error against the same noise is within ``limit``."""
    for budget in BUDGETS[name]:
        la, _, _ = fit(problem, SOLVERS[name](budget), n_samples)
        if (
            abs(relative(sample_variance(function_samples(la, problem.x_test)), same_noise))
            <= limit
        ):
            return budget
    return None


def run_problem(
    problem: Problem, n_samples: int, scan: bool, solvers: list[str] | None = None
) -> list[dict]:
    repeats = 3 if sum(p.numel() for p in problem.model.parameters()) <= SMALL else 0
    exact, exact_timing, _ = fit(problem, None, n_samples, lla.ExactLaplace, repeats)
    closed = mean_variance(exact, problem.x_test)
    exact_functions = function_samples(exact, problem.x_test)
    same_noise = sample_variance(exact_functions)
    mc = monte_carlo_error(exact_functions)
    point_mc = point_error(same_noise, closed)
    rows = []
    for name in solvers or SOLVERS:
        la, timing, warned = fit(problem, SOLVERS[name](), n_samples, repeats=repeats)
        variance = sample_variance(function_samples(la, problem.x_test))
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
            "point_err_same_noise": point_error(variance, same_noise),
            "point_err": point_error(variance, closed),
            "point_mc": point_mc,
            "corr": corr,
            "corr_closed_form": float(torch.corrcoef(torch.stack([variance, closed]))[0, 1]),
            "worst_residual": float(info.rel_residual.max()),
            "worst_error_estimate": (
                None if info.error_estimate is None else float(info.error_estimate.max())
            ),
            "warned": warned,
            "seconds": timing["wall [s]"],
            "CPU seconds": timing["CPU [s]"],
            "repeats": timing["repeats"],
            "exact_seconds": exact_timing["wall [s]"],
            "exact CPU seconds": exact_timing["CPU [s]"],
            "steps": info.n_steps,
        }
        row["pass"] = passes(row)
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


COLUMNS = [
    "problem", "solver", "ran", "D", "n", "err_same_noise", "corr", "point_err_same_noise",
    "err", "mc", "point_err", "point_mc", "worst_residual",
    "worst_error_estimate", "warned", "seconds", "CPU seconds", "repeats", "steps",
    "budget_to_10pct", "pass",
]  # fmt: skip


def page(samples: int, rows: list[dict]) -> str:
    """The results page of ``rows``."""
    return (
        "# Solver fidelity against exact inference\n\n"
        f"{samples} samples. A solver's own error: `err_same_noise` (of the mean functional "
        "variance) and `corr` (per point), against exact samples of the same noise. Beside them "
        "`err`, the error against the closed-form variance, which also holds the Monte-Carlo "
        f"error of {samples} samples (`mc`, its standard error). Per point: `point_err_same_noise` "
        "and `point_err`, the mean over test points of the relative difference of the functional "
        "variance from exact samples of the same noise and from the closed form; `point_mc`, "
        f"that of the exact samples themselves from the closed form, the Monte-Carlo floor of "
        f"{samples} samples (2/√S = {2 / samples**0.5:.2f}). {PASS_RULE}. `seconds` and "
        "`CPU seconds`: medians over `repeats` timed fits after a warm-up (1: timed once, no "
        "warm-up).\n\n" + markdown_table(rows, COLUMNS)
    )


def render(name: str) -> None:
    """Rewrite ``results/<name>.md`` from its JSON, applying :func:`passes` anew."""
    payload, made = committed(name)
    for row in payload["rows"]:
        row["pass"] = passes(row)
        row.setdefault("repeats", 1)
    payload["pass rule"] = PASS_RULE
    write(name, payload, page(payload["samples"], payload["rows"]), made=made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(p for p in PROBLEMS if "fashion" not in p))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--name", default="solver_fidelity", help="results file name")
    parser.add_argument(
        "--only", action="store_true", help="re-run --problems and keep the other problems' rows"
    )
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated subset")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the results page from its JSON, run nothing"
    )
    args = parser.parse_args()
    if args.render:
        render(args.name)
        return
    torch.manual_seed(0)
    rows = []
    if args.only:
        rows = kept(args.name, {PROBLEMS[p]().name for p in args.problems.split(",")})
    for name in args.problems.split(","):
        problem = PROBLEMS[name]()
        n_params = sum(p.numel() for p in problem.model.parameters())
        rows += run_problem(
            problem, args.samples, scan=n_params <= SMALL, solvers=args.solvers.split(",")
        )
    plot(rows, RESULTS / f"{args.name}.png")
    payload = {"samples": args.samples, "pass rule": PASS_RULE, "rows": rows}
    write(args.name, payload, page(args.samples, rows))


if __name__ == "__main__":
    main()
