"""The linear model's mean θ̄ (EM's first E-step): Newton-CG preconditioned by Jacobi or by ``H``.

For each solver-fidelity problem, the mean of the tangent linear model at the problem's prior is
solved by Newton-CG (each CG iteration one data pass, or a matrix product with ``Φ`` held) from
zero, as EM's first step does, with

- ``jacobi``: ``A + diag(M̂)`` (the exact diagonal for the exact family, the noise pass'
  Hutchinson estimate for the sampled one), what every E-step used before;
- ``cholesky`` (exact family): ``H`` itself, from the Cholesky factor the E-step has;
- ``posterior`` (sampled family): ``A + M_r`` with the rank-100 Nyström sketch, the samples' own
  (or one taken for the mean where their solver keeps none: Cholesky, the dual space).

Both run to the mean solver's tolerance (``Newton()``: 1e-6 for the sampled family,
``Newton(rtol=1e-10)`` for the exact one). Writes ``results/mean_solve.{json,md}``.

    python benchmarks/mean_solve.py [--problems a,b]
"""

from __future__ import annotations

import argparse

import torch
from _report import kept, markdown_table, write
from fidelity_problems import PROBLEMS
from torch.utils.data import DataLoader, TensorDataset

import linearised_laplace as lla
from linearised_laplace.core.linalg import CholeskyPreconditioner, cholesky
from linearised_laplace.core.lowrank import Preconditioner
from linearised_laplace.experiments.timing import stopwatch
from linearised_laplace.posteriors.sampled import MEAN_SKETCH_RANK
from linearised_laplace.solvers.auto import choice_noise, choose_solver
from linearised_laplace.solvers.mean import MeanMode, MeanProblem, solve_mean
from linearised_laplace.solvers.preconditioner import with_ggn_sketch

EXACT_UP_TO = 5_000
"""Weights up to which the exact family's dense GGN is built."""
COLUMNS = [
    "problem", "family", "preconditioner", "D", "n", "Newton steps", "CG iterations",
    "relative gradient", "CPU seconds", "error",
]  # fmt: skip


def linear_model(problem):
    kw = {"prior_precision": problem.prior_precision, "progress": False}
    if problem.likelihood == "regression":
        kw["sigma_noise"] = problem.sigma_noise
    la = lla.SampledLaplace(problem.model, problem.likelihood, **kw)
    loader = DataLoader(TensorDataset(*problem.train), batch_size=problem.batch_size)
    return la.linear_model(loader).with_dense_features()


def preconditioners(model, family: str) -> dict:
    """The family's preconditioners of the mean's Newton systems, before and after."""
    if family == "exact":
        ggn = model.dense_ggn()
        jacobi = (ggn.diagonal() + model.precision.prior64).to(model.features.dtype)
        factor = cholesky(model.precision.dense(ggn))
        return {"cholesky": CholeskyPreconditioner(factor), "jacobi": jacobi}  # reference first
    choice = choose_solver(model, None, "auto")
    noise = choice_noise(model, choice, 8, seed=0)
    if choice.space == "dual" or isinstance(choice.solver, lla.Cholesky):
        noise = with_ggn_sketch(model, noise, MEAN_SKETCH_RANK, seed=0)  # as the E-step does
    jacobi = Preconditioner.diagonal(noise.ggn_diag + model.precision.prior)
    return {
        "jacobi": jacobi,
        "posterior": model.precision.preconditioner(noise.ggn_diag, noise.ggn_low_rank),
    }


def run_problem(problem) -> list[dict]:
    model = linear_model(problem)
    problem_of_mean = MeanProblem(model, MeanMode.TANGENT, torch.zeros(model.n_params))
    families = (["exact"] if model.n_params <= EXACT_UP_TO else []) + ["sampled"]
    rows, reference = [], None
    for family in families:
        config = lla.Newton(rtol=1e-10) if family == "exact" else lla.Newton()
        for name, preconditioner in preconditioners(model, family).items():
            init = torch.zeros(model.n_params, dtype=model.features.dtype)
            with stopwatch() as clock:
                result = solve_mean(problem_of_mean, config, init, preconditioner)
            words = result.info.reason.split()  # "S Newton steps, I CG iterations"
            mean = result.samples[0].double()
            if name == "cholesky":
                reference = mean
            row = {
                "problem": problem.name,
                "family": family,
                "preconditioner": name,
                "D": model.n_params,
                "n": len(model.data),
                "Newton steps": int(words[0]),
                "CG iterations": int(words[3]),
                "relative gradient": float(result.info.rel_residual.max()),
                "CPU seconds": clock.timing.record()["CPU [s]"],
                "error": None
                if reference is None
                else float((mean - reference).norm() / reference.norm()),
            }
            rows.append(row)
            print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(p for p in PROBLEMS if "fashion" not in p))
    parser.add_argument(
        "--only", action="store_true", help="re-run --problems and keep the other problems' rows"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    problems = [PROBLEMS[name]() for name in args.problems.split(",")]
    rows = kept("mean_solve", {p.name for p in problems}) if args.only else []
    for problem in problems:
        rows += run_problem(problem)
    page = (
        "# The linear model's mean: Newton-CG preconditioned by Jacobi or by H\n\n"
        "EM's first mean solve (tangent mean, from zero, at the problem's prior), to the mean "
        "solver's tolerance, with the E-step's former preconditioner (`jacobi`) and its present "
        "one (`cholesky`: the exact family's factor of H; `posterior`: the sampled family's "
        "Nyström `A + M_r`). `CG iterations`: the "
        "data passes of the Newton systems (plus one gradient pass per Newton step); `error`: "
        "relative distance of θ̄ from the exact family's with H as preconditioner, the most "
        "accurate (up to 5,000 weights). Each solve timed once.\n\n" + markdown_table(rows, COLUMNS)
    )
    write("mean_solve", {"rows": rows}, page)


if __name__ == "__main__":
    main()
