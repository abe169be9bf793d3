"""Sample-then-optimise convergence: error of SGD samples against exact samples for the same noise.

(a) Bayesian linear regression, d = 1,000 features with power-law scales, n = 10,000 points;
(b) an MLP trained on scikit-learn's digits (D = 7,510 linearised parameters, softmax likelihood).
For each, both objectives (low-variance and naive) run with the library's default SGD settings
(no tuned learning rate) for K = 8 samples, and the relative error ‖ζ − ζ*‖ / ‖ζ*‖ is recorded
against the SGD step, together with wall and CPU time. Run: `python benchmarks/sampler_convergence.py`.
"""

from __future__ import annotations

import matplotlib
import torch
from _report import RESULTS, markdown_table, write
from torch import nn

import linearised_laplace as lla
from linearised_laplace.core.linalg import cholesky, cholesky_solve
from linearised_laplace.experiments.timing import stopwatch
from linearised_laplace.solvers.cholesky import posterior_precision

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

K = 8


def regression_problem(n: int = 10_000, d: int = 1_000) -> lla.LinearGaussianModel:
    gen = torch.Generator().manual_seed(0)
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** -1.0
    x = torch.randn(n, d, generator=gen) * scales
    y = x @ torch.randn(d, generator=gen) + 0.5 * torch.randn(n, generator=gen)
    prior = lla.make_prior(1.0, torch.zeros(d, dtype=torch.long), ["theta"])
    return lla.LinearGaussianModel(
        lla.MatrixFeatures(x),
        lla.Gaussian(0.5),
        prior,
        lla.Data((torch.arange(n), y), batch_size=100),
    )


def digits_problem() -> lla.LinearGaussianModel:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    lin = lla.Linearisation(net)
    prior = lla.make_prior(1.0, lin.selection.group_ids, lin.selection.names)
    return lla.LinearGaussianModel(lin, lla.Categorical(), prior, lla.Data((x, y), batch_size=100))


def run(name: str, model: lla.LinearGaussianModel) -> tuple[list[dict], dict]:
    noise = lla.draw_posterior_noise(model, K, lla.NoiseSource(0), progress=False)
    with stopwatch() as exact_clock:  # once: too long to repeat
        factor = cholesky(posterior_precision(model))
        exact = cholesky_solve(factor, noise.rhs(model.prior.diag())).float()
    exact_fn = model.function_norms(exact).sqrt()
    rows, curves = [], {}
    for objective in ("low_variance", "naive"):
        trace, clock = [], {"wall": 0.0, "CPU": 0.0}  # time spent in the callback
        n_steps = lla.SGD().n_epochs * -(-len(model.data) // model.data.batch_size)
        marks = set(
            torch.unique(torch.logspace(0, torch.log10(torch.tensor(n_steps)), 25).long()).tolist()
        )

        def record(step, z, trace=trace, clock=clock, marks=marks):
            if step in marks:
                with stopwatch() as pause:
                    error = (z - exact).norm(dim=1) / exact.norm(dim=1)
                    trace.append((step, float(error.mean())))
                clock["wall"] += pause.timing.wall_median
                clock["CPU"] += pause.timing.cpu_median

        with stopwatch() as sgd_clock:  # once, less the callback's time
            result = lla.SGD(objective=objective, residual=False).solve(
                model, noise, progress=False, callback=record
            )
        fn_error = float((model.function_norms(result.samples - exact).sqrt() / exact_fn).mean())
        curves[objective] = trace
        rows.append(
            {
                "problem": name,
                "objective": objective,
                "steps": result.info.n_steps,
                "weight-space rel. error": trace[-1][1],
                "function-space rel. error": fn_error,
                "error at 10% of steps": next(e for s, e in trace if s >= n_steps // 10),
                "SGD time [s]": sgd_clock.timing.wall_median - clock["wall"],
                "SGD CPU [s]": sgd_clock.timing.cpu_median - clock["CPU"],
                "exact time [s]": exact_clock.timing.wall_median,
                "exact CPU [s]": exact_clock.timing.cpu_median,
            }
        )
    return rows, curves


def main() -> None:
    torch.set_num_threads(2)
    problems = {
        "BLR d=1000 n=10000": regression_problem(),
        "MLP on digits D=7510": digits_problem(),
    }
    rows, curves = [], {}
    for name, model in problems.items():
        problem_rows, curves[name] = run(name, model)
        rows += problem_rows
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6))
    for ax, (name, by_objective) in zip(axes, curves.items(), strict=True):
        for objective, trace in by_objective.items():
            steps, errors = zip(*trace, strict=True)
            ax.loglog(steps, errors, marker=".", label=objective)
        ax.set(title=name, xlabel="SGD step", ylabel="mean ‖ζ − ζ*‖ / ‖ζ*‖")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "sampler_convergence.png", dpi=120)
    columns = list(rows[0])
    text = (
        "# Sample-then-optimise convergence against exact samples (same noise)\n\n"
        f"K = {K} samples, default `lla.SGD()` (50 epochs, batch 100, preconditioned by `A + M_r` "
        "with the GGN's rank-100 Nyström approximation `M_r`, lr = 0.5 / λ̂, Nesterov 0.9, linear "
        "decay to 1%), float32, two threads. Errors are means over samples; the exact samples come "
        "from a float64 Cholesky solve. SGD time includes its preconditioner's sketch. Each solve "
        "is timed once (`timing.stopwatch`): wall (`time`) and the process's CPU seconds (both "
        "threads), SGD's less the error-recording callback's. Curves: "
        "`sampler_convergence.png`.\n\n" + markdown_table(rows, columns)
    )
    write("sampler_convergence", {"rows": rows, "curves": curves}, text)


if __name__ == "__main__":
    main()
