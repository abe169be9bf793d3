r"""The sampled posterior: zero-mean samples ``ζ_s ~ N(0, H^{-1})`` by sample-then-optimise.

Each sample minimises a randomised quadratic, solved in the primal (weight) or dual (observation)
space (:mod:`~linearised_laplace.solvers.auto`); no ``P×P`` matrix is formed. Sample-based EM keeps
the samples' noise across steps (rescaled to each ``α`` and ``σ``) and warm-starts every solve.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .. import persistence
from .._checks import check_positive_int
from ..em import EMState, EStep, Expectation, check_gamma, function_space_gamma, weight_space_gamma
from ..likelihoods import Gaussian
from ..linear_model import LinearGaussianModel
from ..mean import MeanMode, MeanProblem, posterior_mean, solve_mean
from ..seeds import derive_seed
from ..solvers import CG, SDD, SGD, Cholesky, SolveInfo, Solver
from ..solvers.auto import SPACES, Choice, check_solver, choice_noise, choose_solver, solve_samples
from ..solvers.base import check_convergence
from ..solvers.dual import gaussian_mean
from ..solvers.newton import Newton
from ..solvers.preconditioner import LowRank

SOLVERS = {"SGD": SGD, "CG": CG, "SDD": SDD, "Cholesky": Cholesky, "Newton": Newton}


class SampledPosterior:
    """Samples by a chosen (or automatic) solver, in the primal or dual space.

    Args:
        solver: ``"auto"``/``None``, or an ``SGD``, ``SDD``, ``CG`` or ``Cholesky`` configuration.
        mean_solver: For the linear model's mean in EM (default ``Newton()``).
        space: ``"auto"``, ``"primal"`` or ``"dual"``.
        strict: Raise, rather than warn, when a solve ends above its tolerance.

    Attributes:
        samples: ``[S, P]`` samples in the posterior's coordinates; ``solve_info``: the last solve's.
    """

    def __init__(
        self,
        solver: Solver | str | None = "auto",
        mean_solver: Newton | SGD | None = None,
        space: str = "auto",
        strict: bool = False,
    ):
        self.solver, self.space = check_solver(solver, space), space
        self.strict = bool(strict)
        self.mean_solver = Newton() if mean_solver is None else mean_solver
        self.solve_info: SolveInfo | None = None
        self.forget()

    def forget(self) -> None:
        """Drop the fit."""
        self.samples = None

    def choice(self, model: LinearGaussianModel) -> Choice:
        """The solver and space for ``model`` (``"auto"`` resolved)."""
        return choose_solver(model, self.solver, self.space)

    def check_parallel(self) -> None:
        """The dual space is not sharded over ranks."""
        if self.space == "dual" or isinstance(self.solver, SDD):
            raise ValueError(
                "The dual space (space='dual', or lla.SDD) keeps one unknown per observation and "
                "is not sharded over ranks; under torch.distributed use space='primal' (or "
                "'auto', which then picks it) with another solver."
            )

    def fit(
        self,
        model: LinearGaussianModel,
        n_samples: int,
        seed: int,
        progress: bool | None,
        warm: Tensor | None = None,
        sketch: LowRank | None = None,
    ) -> None:
        """Draw ``n_samples``; ``warm``: samples of the same noise to start a primal solve from."""
        choice = self.choice(model)
        noise = choice_noise(model, choice, n_samples, seed, sketch, progress)
        init = None
        if warm is not None and choice.space == "primal":
            # samples share noise by index, so the first rows warm-start exactly
            init = noise.theta0(model.prior_diag()).clone()
            rows = min(len(warm), len(init))
            init[:rows] = warm[:rows]
        result, _ = solve_samples(model, noise, choice, init, seed, self.strict, progress)
        self.samples, self.solve_info = result.samples, result.info

    def extra_samples(self, count: int, seed: int) -> Tensor:
        """Sampled posteriors draw no more samples than they were fitted with: raises."""
        drawn = len(self.samples)
        raise ValueError(
            f"Only {drawn} posterior samples were drawn, {drawn + count} were asked for. "
            f"Construct with n_samples={drawn + count} and fit again."
        )

    def functional_variance(self, features, x: Tensor) -> Tensor:
        r"""``(1/S) Σ_s (J(x) ζ_s)(J(x) ζ_s)ᵀ`` (the mean is known to be 0): ``[N, C, C]``."""
        _, jz = features.jvp(x, self.samples)
        return (jz[..., :, None] * jz[..., None, :]).mean(0)

    def solve_mean(
        self, problem: MeanProblem, init: Tensor, preconditioner: Tensor, seed: int, progress
    ) -> Tensor:
        """``θ̄``; in the dual space with a Gaussian likelihood from the dual system (closed form)."""
        model = problem.model
        choice = self.choice(model)
        if choice.space != "dual" or not isinstance(model.likelihood, Gaussian):
            result = solve_mean(problem, self.mean_solver, init, preconditioner, seed, progress)
            return result.samples[0]
        zero = torch.zeros_like(init)[None]

        def targets(x: Tensor, y: Tensor) -> Tensor:
            g = problem.outputs(x, zero)[0]
            return y.reshape(g.shape).to(g.dtype) - g

        result = gaussian_mean(model, targets, choice.solver, seed, progress)
        check_convergence(result.info, choice.solver.advice, self.strict)
        return result.samples[0]

    def expectation(
        self,
        model: LinearGaussianModel,
        mode: MeanMode,
        anchor: Tensor,
        seed: int,
        progress: bool | None,
        *,
        gamma: str = "function",
        n_em_samples: int = 8,
    ) -> Expectation:
        """Sample-based EM with ``n_em_samples`` samples per step and the ``gamma`` estimator."""
        check_gamma(gamma)
        k = check_positive_int("n_em_samples", n_em_samples)
        choice = self.choice(model)
        noise = choice_noise(model, choice, k, seed, progress=progress)
        n_groups = model.prior.precision.numel()

        def step(state: EMState) -> EStep:
            current, ratio = model.at(state.precision, state.sigma)
            scaled, prior = noise.scaled(ratio), current.prior_diag()
            step_seed = derive_seed(seed, "em", state.step)
            precondition = scaled.ggn_diag + prior
            mean, residual = posterior_mean(
                current,
                mode,
                anchor,
                lambda p: self.solve_mean(p, state.mean, precondition, step_seed, progress),
            )
            result, warm = solve_samples(
                current, scaled, choice, state.samples, step_seed, self.strict, progress
            )
            if gamma == "function":
                g = function_space_gamma(current, result.samples, n_groups, result.ggn_samples)
            else:
                g = weight_space_gamma(prior, result.samples, model.prior.groups, n_groups)
            return EStep(mean, g, warm, residual, positive_gamma=gamma == "function")

        def refit(state: EMState, n_samples: int) -> None:
            current, ratio = model.at(state.precision, state.sigma)
            sketch = noise.scaled(ratio).ggn_low_rank
            self.fit(current, n_samples, seed, progress, state.samples, sketch)

        return Expectation(step, refit, {"n_em_samples": k, "gamma": gamma, **self.settings()})

    def settings(self) -> dict:
        """The configuration a saved posterior records."""
        return {
            "solver": None if self.solver is None else persistence.solver_settings(self.solver),
            "mean_solver": persistence.solver_settings(self.mean_solver),
            "space": self.space,
            "strict": self.strict,
        }

    @staticmethod
    def settings_from(meta: dict, path: str | Path) -> dict:
        """Constructor keywords from saved settings, checked."""
        schema = {
            "solver": (dict, type(None)),
            "mean_solver": dict,
            "space": frozenset(SPACES),
            "strict": bool,
        }
        persistence.check_fields(meta, schema, path)
        solver = meta["solver"]
        if solver is not None:
            solver = persistence.build_config(solver, SOLVERS, "solver", path)
        mean_solvers = {"Newton": Newton, "SGD": SGD}
        return {
            "solver": solver,
            "mean_solver": persistence.build_config(
                meta["mean_solver"], mean_solvers, "mean_solver", path
            ),
            "space": meta["space"],
            "strict": meta["strict"],
        }

    def tensors(self) -> dict[str, Tensor]:
        """The fitted tensors to save besides the samples: none."""
        return {}

    def restore(self, tensors: dict[str, Tensor], device) -> None:
        """Restore saved samples."""
        self.samples = tensors["samples"].to(device)
