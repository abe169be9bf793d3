r"""The sampled posterior: zero-mean samples ``ζ_s ~ N(0, H^{-1})`` by sample-then-optimise.

Each sample minimises a randomised quadratic in the primal (weight) or dual (observation) space
(:mod:`~linearised_laplace.solvers.auto`); no ``P × P`` matrix is formed. Sample-based EM keeps the
samples' noise across steps, rescaled to each ``σ``, and warm-starts every solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from ..core.checks import check_positive_int
from ..core.seeds import derive_seed
from ..model.likelihoods import Gaussian
from ..model.linear_model import LinearGaussianModel
from ..model.noise import PosteriorNoise
from ..solvers.auto import (
    check_sharding,
    check_solver,
    choice_noise,
    choose_solver,
    draw_samples,
    sampler_settings,
    solve_samples,
    solver_memory,
)
from ..solvers.base import check_convergence
from ..solvers.cholesky import Cholesky
from ..solvers.covariance import restore_covariance
from ..solvers.dual import dual_mean
from ..solvers.mean import MeanMode, posterior_mean, solve_mean
from ..solvers.newton import Newton
from ..solvers.preconditioner import with_ggn_sketch
from .expectation import EStep, Expectation, Iterate, MeanSolve
from .gamma import (
    check_gamma,
    dual_space_terms,
    exact_gamma,
    function_space_gamma,
    function_space_terms,
    pooled_gamma,
    weight_space_gamma,
)

MEAN_SKETCH_RANK = 100
"""Rank of the Nyström sketch of ``M`` that preconditions the mean where the samples' solver
keeps none (Cholesky, the dual space): ``A + M_r``, as the primal solvers' default."""


def closed_form_mean(choice, likelihood) -> bool:
    """Whether the mean comes in closed form from the dual system (a Gaussian likelihood)."""
    return choice.space == "dual" and isinstance(likelihood, Gaussian)


def sample_factor(jz: Tensor) -> Tensor:
    r"""``[S, N, C] → [N, C, S]``, ``G = (J ζ_s)_s / √S``: ``G_a G_bᵀ = (1/S) Σ_s (J_a ζ_s)(J_b ζ_s)ᵀ``."""
    return jz.permute(1, 2, 0) / math.sqrt(jz.shape[0])


def functional_factor(features, x: Tensor, fit) -> Tensor:
    """``G`` with ``G Gᵀ = J(x) Σ J(x)ᵀ`` of a fit (its ``covariance`` and ``samples``).

    Exact ``[N, C, D]`` where a dense solve left ``Σ``; else :func:`sample_factor` of the samples
    ``[N, C, S]``.
    """
    if fit.covariance is not None:
        return fit.covariance.functional_factor(features.to_dense(x))
    return sample_factor(features.jvp(x, fit.samples)[1])


def sampled_e_step(
    model: LinearGaussianModel,
    noise: PosteriorNoise,
    mode: MeanMode,
    anchor: Tensor,
    seed: int,
    gamma: str,
    solve: MeanSolve,
    sample: Callable,
) -> Callable[[Iterate], EStep]:
    """The sampled E-step: ``θ̄`` by ``solve``, ``γ̂`` from samples of the kept ``noise``.

    ``noise`` is rescaled to each step's ``σ``; ``sample(model, noise, init, seed)`` returns the
    solve's result and the warm start of the next step's. ``gamma``: ``"function"``, ``"weight"``
    or ``"pooled"`` (function and dual space, :func:`~.gamma.pooled_gamma`; the solve is dual).
    Where the solve was dense (it returns ``Σ``), ``γ`` is exact instead.
    """

    def step(state: Iterate) -> EStep:
        current, ratio = model.at(state.precision, state.sigma)
        scaled, prior, n_groups = noise.scaled(ratio), current.precision.prior, len(state.precision)
        step_seed = derive_seed(seed, "em", state.step)

        def mean_of(problem) -> Tensor:  # the preconditioner is built only when a mean is solved
            pre = current.precision.preconditioner(scaled.ggn_diag, scaled.ggn_low_rank)
            return solve(problem, state.mean, pre, step_seed)

        mean, residual = posterior_mean(current, mode, anchor, mean_of)
        result, warm = sample(current, scaled, state.samples, step_seed)
        if result.covariance is not None:  # a dense solve: γ exactly, from its factorisation
            diagonal = result.covariance.diagonal()
            g = exact_gamma(diagonal, current.precision.prior64, model.prior.groups, n_groups)
        elif gamma == "pooled":  # warm: the dual solutions w
            terms = function_space_terms(current, result.samples, result.ggn_samples)
            g = pooled_gamma(terms, dual_space_terms(warm))
        elif gamma == "function":
            g = function_space_gamma(current, result.samples, n_groups, result.ggn_samples)
        else:
            g = weight_space_gamma(prior, result.samples, model.prior.groups, n_groups)
        info = result.info
        positive = gamma == "function" or result.covariance is not None
        return EStep(mean, g, warm, residual, positive, bool(info.converged), info.n_steps)

    return step


EM_RTOL = 1e-3
"""The relative residual at which EM's sample solves stop by default (see :func:`em_solver`)."""


def em_solver(solver, rtol: float, dtype: torch.dtype):
    """``solver`` as EM's E-steps run it: stopping at relative residual ``rtol`` where it has one.

    An E-step needs its samples only for ``γ̂``, whose Monte-Carlo error with ``K`` samples is
    percents, so a tolerance looser than the final samples' saves iterations of every step. A
    solver's own looser ``rtol`` is kept; one without a residual tolerance (SGD, Cholesky) is
    returned unchanged. ``benchmarks/results/em_rtol-*.md`` measures the solver's share of
    ``γ̂``'s error by ``rtol`` against the Monte-Carlo spread of 8 samples.
    """
    if not 0 < rtol < 1:
        raise ValueError(f"`em_rtol` must lie in (0, 1), got {rtol!r}.")
    if not hasattr(solver, "rtol"):
        return solver
    return replace(solver, rtol=max(rtol, solver.tolerance(dtype)))


class SampledPosterior:
    """Samples by a chosen (or the automatic) solver; see :class:`~linearised_laplace.SampledLaplace`.

    Where the solve is dense (Cholesky), it leaves the exact covariance ``Σ`` behind, and EM's
    ``γ`` and the functional covariance ``J Σ Jᵀ`` come from it instead of from the samples
    (which remain for :meth:`~linearised_laplace.Laplace.predictive_samples`).

    Attributes:
        samples: ``[S, P]`` samples; ``solve_info``: the last solve's diagnostics.
        covariance: ``Σ`` of a dense solve (:mod:`~linearised_laplace.solvers.covariance`), else
            ``None``.
        model: The linear model of the last fit (``None`` after a load), kept so that the
            samples can be re-solved at other priors.
    """

    def __init__(self, solver="auto", mean_solver=None, space: str = "auto", strict: bool = False):
        self.solver, self.space = check_solver(solver, space), space
        self.strict = bool(strict)
        self.mean_solver = Newton() if mean_solver is None else mean_solver
        self.samples, self.solve_info = None, None
        self.forget()

    def forget(self) -> None:  # noqa: D102
        self.samples = self.model = self.covariance = None

    def wants_kronecker(self, model) -> bool:
        """Whether the solver that runs on ``model`` preconditions with KFAC (primal only)."""
        choice = choose_solver(model, self.solver, self.space)
        return choice.space == "primal" and getattr(choice.solver, "uses_kronecker", False)

    def memory_needs(self, model, n_samples: int) -> dict[str, float]:
        """GiB of what the chosen solver holds to draw ``n_samples`` (:func:`solver_memory`)."""
        return solver_memory(model, choose_solver(model, self.solver, self.space), n_samples)

    def check_parallel(self) -> None:
        """The dual space is not sharded over ranks."""
        check_sharding(self.solver, self.space)

    def fit(self, model, n_samples: int, seed: int, progress, warm=None, sketch=None) -> None:
        """Draw ``n_samples``, warm-started from ``warm`` (samples of the same noise)."""
        choice = choose_solver(model, self.solver, self.space)
        result = draw_samples(model, choice, n_samples, seed, self.strict, warm, sketch, progress)
        self.model, self.samples, self.solve_info = model, result.samples, result.info
        self.covariance = result.covariance

    def grid_search(self, features, x, grid: Tensor, score, seed: int, progress):
        r"""``score`` of the samples re-solved at each isotropic ``α``; keeps the best.

        The fit's noise (``ξ``, ``u``: a pure function of ``seed``, rebuilt in one data pass
        rather than held beside the samples) is rescaled to each ``α`` (``A θ_0 + u``), not
        redrawn, and each solve is warm-started from the last (a primal one first from the fitted
        samples), so the scores differ by ``α`` alone. ``score`` takes the factor ``[N, C, S]`` of
        the sample covariance ``(1/S) Σ_s (J ζ_s)(J ζ_s)ᵀ`` (or, from a dense solve, of
        ``J Σ Jᵀ``; lower is better).
        """
        choice = choose_solver(self.model, self.solver, self.space)
        noise = choice_noise(self.model, choice, len(self.samples), seed, progress=progress)
        warm = self.samples if choice.space == "primal" else None
        scores, best, index = [], None, 0
        for k, alpha in enumerate(grid):
            model = self.model.with_prior(self.model.prior.with_precision(alpha))
            result, warm = solve_samples(model, noise, choice, warm, seed, self.strict, progress)
            scores.append(score(functional_factor(features, x, result).double()))
            if best is None or scores[-1] < scores[index]:
                best, index = (model, result), k
        (self.model, result) = best
        self.samples, self.solve_info = result.samples, result.info
        self.covariance = result.covariance
        return scores, index

    def at(self, precision: Tensor, sigma: float, seed: int, progress) -> bool:
        """False: each sample is a solve at the fit's ``α`` and ``σ``; only a new fit re-solves them."""
        return False

    def extra_samples(self, count: int, seed: int) -> Tensor:
        """Raises: a sampled posterior has only the samples it was fitted with."""
        drawn = len(self.samples)
        raise ValueError(
            f"Only {drawn} posterior samples were drawn, {drawn + count} were asked for. "
            f"Construct with n_samples={drawn + count} and fit again."
        )

    def functional_factor(self, features, x: Tensor) -> Tensor:
        """:func:`functional_factor` of the fit."""
        return functional_factor(features, x, self)

    def solver_of_mean(self, progress):
        """``(problem, init, preconditioner, seed) ↦ θ̄`` (dual and Gaussian: in closed form)."""

        def solve(problem, init: Tensor, preconditioner: Tensor, seed: int) -> Tensor:
            choice = choose_solver(problem.model, self.solver, self.space)
            if not closed_form_mean(choice, problem.model.likelihood):
                result = solve_mean(problem, self.mean_solver, init, preconditioner, seed, progress)
                return result.samples[0]
            result = dual_mean(problem, choice.solver, seed, progress)
            check_convergence(result.info, choice.solver.advice, self.strict)
            return result.samples[0]

        return solve

    def expectation(
        self,
        model,
        mode,
        anchor,
        seed: int,
        progress,
        *,
        gamma="auto",
        n_em_samples=8,
        em_rtol=EM_RTOL,
    ) -> Expectation:
        """Sample-based EM (:func:`sampled_e_step`), refit at the end.

        ``gamma``: the ``γ̂`` estimator (``"auto"``: function space, pooled with the dual space's
        where the solve is dual and the prior one group); ``n_em_samples``: samples per step;
        ``em_rtol``: the relative residual at which the E-steps' sample solves stop
        (:func:`em_solver`; the final samples keep the solver's own).
        """
        check_gamma(gamma)
        k = check_positive_int("n_em_samples", n_em_samples)
        final = choose_solver(model, self.solver, self.space)
        choice = replace(final, solver=em_solver(final.solver, em_rtol, model.features.dtype))
        if gamma == "auto":
            pooled = choice.space == "dual" and len(model.prior.precision) == 1
            gamma = "pooled" if pooled else "function"
        noise = choice_noise(model, choice, k, seed, progress=progress)
        unsketched = choice.space == "dual" or isinstance(choice.solver, Cholesky)
        solves_mean = mode is not MeanMode.NETWORK and not closed_form_mean(
            choice, model.likelihood
        )
        if solves_mean and unsketched:
            # the samples' solver keeps no sketch of M: take one for the mean's Newton systems
            noise = with_ggn_sketch(model, noise, MEAN_SKETCH_RANK, seed)

        def sample(current, scaled, init, step_seed):
            return solve_samples(current, scaled, choice, init, step_seed, self.strict, progress)

        def refit(state, n_samples: int) -> None:
            current, ratio = model.at(state.precision, state.sigma)
            sketch = noise.scaled(ratio).ggn_low_rank
            self.fit(current, n_samples, seed, progress, state.samples, sketch)

        solve = self.solver_of_mean(progress)
        step = sampled_e_step(model, noise, mode, anchor, seed, gamma, solve, sample)
        settings = {"n_em_samples": k, "gamma": gamma, "em_rtol": em_rtol, **self.settings()}
        dense = isinstance(choice.solver, Cholesky)
        return Expectation(step, refit, settings, not dense, noise.ggn_low_rank, noise.ggn_diag)

    def settings(self) -> dict:
        """The configuration a saved posterior records."""
        return sampler_settings(self.solver, self.mean_solver, self.space, self.strict)

    def tensors(self) -> dict[str, Tensor]:  # noqa: D102
        return {} if self.covariance is None else self.covariance.tensors()

    def restore(self, tensors: dict[str, Tensor], device) -> None:  # noqa: D102
        self.samples = tensors["samples"].to(device)
        self.covariance = restore_covariance(tensors, device)
