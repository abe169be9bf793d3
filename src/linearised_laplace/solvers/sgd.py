r"""Sample-then-optimise: posterior samples as minimisers of randomised quadratics, by minibatch SGD.

For noise ``(θ_0, ν)`` (see :class:`~linearised_laplace.model.noise.PosteriorNoise`) each sample minimises
one of two objectives with the same minimiser ``ζ = H^{-1}(A θ_0 + Φᵀ L ν) ~ N(0, H^{-1})``:

* naive: ``½ Σ_i ‖Φ_i z − ε_i‖²_{B_i} + ½ ‖z − θ_0‖²_A`` with targets ``ε_i = B_i^+ L_i ν_i``;
* low-variance (default; Antorán et al., 2023, Eq. 7):
  ``½ Σ_i ‖Φ_i z‖²_{B_i} + ½ ‖z − θⁿ‖²_A`` with ``θⁿ = θ_0 + A^{-1} Φᵀ L ν``.

The low-variance objective moves the noise into the regulariser, which is evaluated exactly, so the
minibatch gradient noise vanishes as ``z`` approaches a sample that is small in function space, and it
never needs ``B^{-1}`` (which does not exist for the softmax likelihood).

Each step estimates the gradient on a minibatch 𝔅 as
``(n/|𝔅|) Σ_{i∈𝔅} Φ_iᵀ B_i (Φ_i z − t_i) + A(z − c)`` with one JVP and one VJP per sample, stacks the
``K`` samples and takes a Nesterov-momentum step.

Step size without tuning: the gradient is preconditioned by ``P = A + M_r`` (a rank-``r`` Nyström
approximation ``M_r`` of the GGN; with ``r = 0``, Jacobi's ``A + diag(M̂)`` from the free Hutchinson
estimate of the noise pass; see :mod:`.preconditioner`) and divided by
``λ̂ ≈ λ_max(P^{-1/2} H P^{-1/2})``, estimated by 20 Lanczos iterations on a random subsample of the
data. ``lr`` is thus dimensionless (``lr = 1`` would be the largest stable step of plain gradient
descent on a quadratic of curvature ``λ̂``). The step then decays linearly to ``lr · lr_end`` over
95% of the steps.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import TypeVar

import torch
from torch import Tensor

from ..core.linalg import top_eigenvalue
from ..core.lowrank import Preconditioner
from ..core.progress import progress_bar
from ..core.seeds import seeded_generator
from ..exceptions import DivergenceError
from ..model.linear_model import LinearGaussianModel
from ..model.noise import PosteriorNoise
from .base import SolveInfo, SolveResult, check_settings, relative_norm, relative_residual
from .preconditioner import with_ggn_sketch

T = TypeVar("T")
Callback = Callable[[int, Tensor], None]
Residual = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
Logits = Callable[[Tensor, Tensor], Tensor]


class Objective(str, Enum):
    """Sample-then-optimise objectives (same minimiser, different minibatch gradient noise)."""

    LOW_VARIANCE = "low_variance"
    NAIVE = "naive"


@dataclass(frozen=True)
class SGD:
    """Minibatch SGD with Nesterov momentum for sample-then-optimise.

    Args:
        n_epochs: Passes over the training data.
        lr: Dimensionless initial step size; the step in natural units is ``lr / λ̂``.
        momentum: Nesterov momentum, in ``[0, 1)``.
        lr_end: Final step as a fraction of the initial one (linear decay), in ``(0, 1]``.
        decay_fraction: Fraction of the steps over which the step decays (then constant), in
            ``(0, 1]``.
        batch_size: Minibatch size; defaults to the training loader's.
        clip: Global-norm clipping of the stacked ``[K, D]`` gradient, as a multiple (``> 0``) of
            the first step's norm; ``None`` disables it.
        retries: Restarts at half the step after a divergence before giving up (``≥ 0``).
        polyak: Rate ``ρ ∈ (0, 1]`` of Polyak (exponential) averaging ``z̄ ← z̄ + ρ (z − z̄)``;
            the average is returned. ``None`` returns the last iterate.
        objective: ``"low_variance"`` (default) or ``"naive"``.
        precondition: Precondition the gradient by ``P ≈ H`` (see ``preconditioner_rank``); it only
            changes the path, not the minimiser. ``False``: plain SGD.
        preconditioner_rank: Rank ``r`` of the Nyström approximation in ``P = A + M_r``
            (:mod:`~linearised_laplace.solvers.preconditioner`), built from one data pass of
            ``r + 10`` GGN products (capped by its memory for very large ``D``); ``0`` is Jacobi,
            ``P = A + diag(M̂)`` from the noise pass' free Hutchinson estimate. The default
            deflates the top of the GGN's spectrum, which small-noise regression needs to
            converge at all (``benchmarks/results/solver_fidelity.md`` compares it with Jacobi,
            ``SGD-jacobi``).
        curvature_points: Data points in the random subsample on which ``λ̂`` is estimated;
            defaults to the batch size, so that ``λ̂`` reflects a minibatch's curvature (larger
            than the full data's), which is what limits a stable step.
        curvature_iters: Lanczos iterations for that estimate.
        residual: Compute each sample's relative residual at the end (one extra data pass); an
            end worse than both zero and the start (whose residual costs another pass, taken only
            when an end exceeds 1) counts as a divergence.
        tol: A sample whose final error estimate, the relative residual in the preconditioner's
            inverse norm ``‖H ζ − A θⁿ‖_{P⁻¹} / ‖A θⁿ‖_{P⁻¹}`` (≈ the relative error in the
            energy norm), exceeds this raises a :class:`~linearised_laplace.ConvergenceWarning`.
            The Euclidean residual (also reported), which the stiffest directions dominate, does
            not tell good samples from bad ones; how well each separates them is measured in
            ``benchmarks/results/solver_fidelity.md`` (the README quotes it).
    """

    n_epochs: int = 50
    lr: float = 0.5
    momentum: float = 0.9
    lr_end: float = 0.01
    decay_fraction: float = 0.95
    batch_size: int | None = None
    clip: float | None = None
    polyak: float | None = None
    retries: int = 3
    objective: Objective | str = Objective.LOW_VARIANCE
    precondition: bool = True
    preconditioner_rank: int = 100
    curvature_points: int | None = None
    curvature_iters: int = 20
    residual: bool = True
    tol: float = 0.1
    name = "sgd"
    advice = (
        "Raise lla.SGD(n_epochs=...) or its preconditioner_rank, or use solver='auto' or "
        "lla.CG() (full-batch, exact to its rtol)."
    )

    def __post_init__(self):
        try:
            object.__setattr__(self, "objective", Objective(self.objective))
        except ValueError as err:
            valid = ", ".join(repr(o.value) for o in Objective)
            raise ValueError(
                f"`objective` must be one of {valid}, got {self.objective!r}."
            ) from err
        check_settings(
            "SGD",
            self,
            positive_ints=("n_epochs", "curvature_iters", "batch_size", "curvature_points"),
            non_negative_ints=("retries", "preconditioner_rank"),
            positive=("lr", "tol", "clip"),
            intervals={
                "momentum": "[0, 1)",
                "lr_end": "(0, 1]",
                "decay_fraction": "(0, 1]",
                "polyak": "(0, 1]",
            },
        )

    def sketch_rank(self, model: LinearGaussianModel) -> int:
        """The rank of the GGN sketch this solver preconditions ``model`` with."""
        return self.preconditioner_rank if self.precondition else 0

    def solve(
        self,
        model: LinearGaussianModel,
        noise: PosteriorNoise,
        *,
        init: Tensor | None = None,
        seed: int = 0,
        progress: bool | None = None,
        callback: Callback | None = None,
    ) -> SolveResult:
        """Run :func:`sample_then_optimise` with this configuration."""
        return sample_then_optimise(
            model, noise, self, init=init, seed=seed, progress=progress, callback=callback
        )


def estimate_top_curvature(
    model: LinearGaussianModel,
    n_points: int,
    n_iter: int,
    generator: torch.Generator,
    preconditioner: Preconditioner | None = None,
    at: Logits | None = None,
) -> float:
    """``λ̂ ≈ λ_max(Cᵀ H C)`` by Lanczos on a random subsample of ``m`` data points.

    Here ``H ≈ (n/m) Σ_{i∈𝒮} Φ_iᵀ B_i Φ_i + A``, ``C Cᵀ = P^{-1}`` for the preconditioner ``P``
    (identity by default), and ``B_i`` is evaluated at ``at(x, f_0(x))`` (default: at ``f_0``).
    """
    data, features = model.data, model.features
    subset = data.random_order(generator)[: min(n_points, len(data))]
    batches = [x for _, x, _ in data.batches(subset)]
    ratio = len(data) / subset.numel()
    prior = model.precision.prior
    half = (lambda w: w) if preconditioner is None else preconditioner.half
    half_t = (lambda w: w) if preconditioner is None else preconditioner.half_t

    def matvec(w: Tensor) -> Tensor:
        z = half(w)
        ggn_z = data.all_reduce(sum((model.ggn_vec(x, z, at)[1] for x in batches), 0 * z))
        return half_t(prior * z + ratio * ggn_z)

    return top_eigenvalue(
        matvec,
        model.n_params,
        n_iter=n_iter,
        generator=generator,
        dtype=features.dtype,
        device=features.device,
    )


def stochastic_minimise(
    model: LinearGaussianModel,
    residual: Residual,
    centre: Tensor,
    init: Tensor,
    *,
    config: SGD,
    preconditioner: Preconditioner,
    curvature: float,
    generator: torch.Generator,
    progress: bool | None = None,
    callback: Callback | None = None,
    desc: str = "SGD",
) -> tuple[Tensor, int]:
    """Minimise ``Σ_i ℓ_i(z_k) + ½ ‖z_k − c_k‖²_A`` for ``K`` rows at once by minibatch SGD.

    The step is ``lr · P^{-1} g / λ̂`` with Nesterov momentum and a linear decay, where
    ``g = (n/|𝔅|) Σ_{i∈𝔅} Φ_iᵀ r_i + A(z − c)`` and ``r_i = ∂ℓ_i/∂f`` comes from ``residual``.

    Args:
        model: The linear-Gaussian model (features, prior and data).
        residual: ``(indices, x, y, z [K, D]) ↦ r`` ``[K, b, C]``, the output-space gradients.
        centre: ``[K, D]`` (or broadcastable) centres ``c`` of the prior term.
        init: ``[K, D]`` starting point.
        config: SGD settings.
        preconditioner: ``P``; the step is ``P^{-1} g``.
        curvature: ``λ̂``, the top eigenvalue of the preconditioned minibatch Hessian.
        generator: Drives the minibatch order.
        progress: Show a progress bar.
        callback: Called as ``callback(step, z)`` after every step.
        desc: Progress-bar label.

    Returns:
        The solution ``[K, D]`` (the Polyak average if enabled) and the number of steps.

    Raises:
        DivergenceError: The iterates became non-finite or unbounded.
    """
    features, data = model.features, model.data
    prior = model.precision.prior
    batch_size = config.batch_size or data.batch_size
    z = init.detach().clone().requires_grad_(True)
    n_steps = config.n_epochs * math.ceil(len(data) / batch_size)
    optimiser = torch.optim.SGD([z], lr=config.lr, momentum=config.momentum, nesterov=True)
    schedule = torch.optim.lr_scheduler.LinearLR(
        optimiser,
        start_factor=1.0,
        end_factor=config.lr_end,
        total_iters=max(1, int(config.decay_fraction * n_steps)),
    )
    average = z.detach().clone() if config.polyak else None
    bound = 1e3 * float(prior.max() / prior.min()) * float(centre.norm() + init.norm() + 1.0)
    clip_norm = None
    step = 0
    with progress_bar(total=n_steps, enabled=progress, desc=desc) as bar:
        for epoch in range(config.n_epochs):
            for size, (idx, x, y) in data.sharded_batches(data.random_order(generator), batch_size):
                _, pull = features.pullback(x)
                data_term = data.all_reduce(pull(residual(idx, x, y, z.detach())))
                data_term = data_term * (len(data) / size)
                z.grad = preconditioner.solve(data_term + prior * (z.detach() - centre)) / curvature
                if config.clip is not None:
                    clip_norm = clip_norm or config.clip * float(z.grad.norm())
                    torch.nn.utils.clip_grad_norm_([z], clip_norm)
                optimiser.step()
                schedule.step()
                step += 1
                if not bool(torch.isfinite(z).all()) or float(z.detach().norm()) > bound:
                    raise DivergenceError(
                        f"{desc} diverged at step {step} (epoch {epoch + 1}): the iterates became "
                        f"non-finite or unbounded with lr={config.lr:g}. Lower the step, e.g. "
                        f"SGD(lr={config.lr / 2:g}), or clip the gradient, e.g. SGD(clip=1.0)."
                    )
                if average is not None:
                    average.lerp_(z.detach(), config.polyak)
                if callback is not None:
                    callback(step, (average if average is not None else z).detach())
                bar.update()
    return (average if average is not None else z).detach(), n_steps


def with_backoff(attempt: Callable[[SGD], T], config: SGD, desc: str) -> T:
    """Run ``attempt(config)``, retried from the start at half the step after a divergence.

    Minibatch curvature is heavy-tailed (a batch holding a point with rare features can be far more
    curved than the subsample that set ``λ̂``), so a step that is stable for most batches can
    diverge on a few. Up to ``config.retries`` halvings are tried, each with a warning.
    """
    for _ in range(config.retries):
        try:
            return attempt(config)
        except DivergenceError:
            warnings.warn(
                f"{desc} diverged with lr={config.lr:g}; retrying from the start with "
                f"lr={config.lr / 2:g}.",
                RuntimeWarning,
                stacklevel=3,
            )
            config = replace(config, lr=config.lr / 2)
    return attempt(config)


def check_residuals(residuals: Tensor, initial: Tensor, config: SGD, desc: str) -> None:
    """Raise :class:`DivergenceError` if SGD ended worse than where it started and than zero.

    ``residuals`` and ``initial`` are relative residuals (or gradients) at the end and the start;
    a relative residual above 1 is worse than the zero solution.
    """
    worse = ~(residuals <= torch.clamp(initial, min=1.0))  # also catches NaN
    if bool(worse.any()):
        raise DivergenceError(
            f"{desc} ended with a relative residual of {float(residuals.max()):.3g}, worse than at "
            f"its start and than the zero solution, with lr={config.lr:g}. Lower the step, e.g. "
            f"SGD(lr={config.lr / 2:g})."
        )


def sample_then_optimise(
    model: LinearGaussianModel,
    noise: PosteriorNoise,
    config: SGD,
    *,
    init: Tensor | None = None,
    seed: int = 0,
    progress: bool | None = None,
    callback: Callback | None = None,
) -> SolveResult:
    """Solve the ``K`` sample-then-optimise problems of ``noise`` by stacked minibatch SGD.

    Args:
        model: The linear-Gaussian model.
        noise: The samples' noise.
        config: SGD settings.
        init: ``[K, D]`` warm start; defaults to the prior draws ``θ_0``.
        seed: Seeds the minibatch order and the curvature estimate.
        progress: Show a progress bar (None: only on a terminal).
        callback: Called as ``callback(step, samples)`` after every step.

    Returns:
        The samples ``[K, D]`` and diagnostics.

    Raises:
        DivergenceError: The iterates became non-finite or unbounded.
    """
    start = time.perf_counter()
    features, likelihood, data = model.features, model.likelihood, model.data
    generator = seeded_generator(seed, "sgd")
    prior = model.precision.prior
    if config.precondition:
        noise = with_ggn_sketch(model, noise, config.sketch_rank(model), seed)
        preconditioner = model.precision.preconditioner(noise.ggn_diag, noise.ggn_low_rank)
    else:
        preconditioner = Preconditioner.diagonal(torch.ones_like(prior))
    curvature = estimate_top_curvature(
        model,
        config.curvature_points or config.batch_size or data.batch_size,
        config.curvature_iters,
        generator,
        preconditioner,
    )
    theta0 = noise.theta0(prior)
    nu = None
    if config.objective is Objective.NAIVE:  # per-point noise, regenerated from the noise source
        kw = {"dtype": features.dtype, "device": features.device}
        nu = noise.source.points(torch.arange(len(data)), noise.n_samples, model.n_outputs, **kw)

    def residual(idx: Tensor, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        f0, error = features.jvp(x, z)
        if nu is not None:
            error = error - likelihood.noise_target(f0, nu[:, idx])
        return likelihood.hessian_vec(f0, error)

    rhs = noise.rhs(prior)

    def attempt(cfg: SGD) -> tuple[Tensor, int, Tensor, Tensor, Tensor | None]:
        samples, n_steps = stochastic_minimise(
            model,
            residual,
            theta0 if nu is not None else noise.theta_n(prior),
            start_point,
            config=cfg,
            preconditioner=preconditioner,
            curvature=curvature,
            generator=seeded_generator(seed, "sgd", cfg.lr),
            progress=progress,
            callback=callback,
            desc="sample-then-optimise",
        )
        if not cfg.residual:
            unknown = torch.full((noise.n_samples,), float("nan"))
            return samples, n_steps, unknown, unknown, None
        ggn = model.ggn_products(samples)
        r = prior * samples + ggn - rhs
        residuals = relative_norm(r, rhs)
        if not bool((residuals <= 1.0).all()):  # worse than zero: was the start worse still?
            initial.append(initial[0] if initial else relative_residual(model, start_point, rhs))
            check_residuals(residuals, initial[0], cfg, "sample-then-optimise")
        return samples, n_steps, residuals, preconditioned_residual(preconditioner, r, rhs), ggn

    start_point = theta0 if init is None else init
    initial: list[Tensor] = []  # the start's residuals, computed only if an end exceeds 1

    samples, n_steps, residuals, error, ggn = with_backoff(attempt, config, "sample-then-optimise")
    info = SolveInfo(
        config.name,
        n_steps,
        residuals,
        time.perf_counter() - start,
        curvature,
        tolerance=config.tol if config.residual else None,
        error_estimate=error if config.residual else None,
    )
    return SolveResult(samples, info, ggn)


def preconditioned_residual(preconditioner: Preconditioner, r: Tensor, rhs: Tensor) -> Tensor:
    """``‖r‖_{P⁻¹} / ‖b‖_{P⁻¹}``: ``[K]``, the relative error in the energy norm when ``P ≈ H``.

    With ``e = ζ − H⁻¹b``, ``‖r‖_{H⁻¹} = ‖e‖_H`` and ``‖b‖_{H⁻¹} = ‖H⁻¹b‖_H``. Unlike the Euclidean
    residual, which the stiffest directions dominate, this weighs an error in the flat, prior
    dominated directions, where the predictive variance lives, at its cost in the posterior.
    """
    return preconditioner.half_t(r).norm(dim=-1) / preconditioner.half_t(rhs).norm(dim=-1)
