r"""The posterior mean ``θ̄`` of the linear model: the weights that enter the MacKay update.

``θ̄`` minimises ``F(w) = Σ_i −log p(y_i | g_i(w)) + ½ wᵀ A w``, a convex problem, with outputs

* ``"tangent"`` (Antorán et al.'s (2023) code): ``g_i(w) = Φ_i w``;
* ``"affine"`` (its tomography code): ``g_i(w) = f_0(x_i) + Φ_i (w − w*)``, ``w*`` the network's
  weights in the features' coordinates;
* ``"network"`` (the default, except for a classifier under the g-prior): no solve, ``θ̄ = w*`` (the network's own
  weights, as laplace-torch uses).

Antorán et al. (ICLR 2023, §4) argue for the linear model's own mode: ``θ*`` is not a stationary
point of the linear model (early stopping, normalisation layers), and EM with it picks a smaller
``α``. Measured on held-out data, under an isotropic prior that smaller ``α`` is the better one:
EM with ``θ*`` lands nearer the validation oracle of the κ-adic joint log-likelihood than EM with
the tangent mode on every classifier of ``benchmarks/results/prior_rules-*.md``, and nearer the best
held-out NLL on the regression problems of ``benchmarks/results/regression_priors.md``, where the
tangent mode's EM diverged on overfit networks; and it needs no mean solve. Under the g-prior,
EM with ``θ*`` collapsed ``α`` on the overconfident CNN (test NLL 2.3), so for classifiers
``"auto"`` keeps the seed paper's pairing there: the g-prior with the tangent mode.

Two solvers: full-batch Newton-CG (:class:`~linearised_laplace.solvers.newton.Newton`; precise, each CG iteration one data pass) and
minibatch SGD (:class:`~linearised_laplace.solvers.SGD`; Antorán et al.'s (2023) choice, scalable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from ..core.lowrank import Preconditioner, PreconditionerLike
from ..core.seeds import seeded_generator
from ..model.likelihoods import Gaussian
from ..model.linear_model import LinearGaussianModel
from .base import SolveInfo, SolveResult
from .newton import Newton, newton_mean
from .sgd import (
    SGD,
    check_residuals,
    estimate_top_curvature,
    stochastic_minimise,
    with_backoff,
)


class MeanMode(str, Enum):
    """Which linear model's mode is used as ``θ̄``."""

    TANGENT = "tangent"
    AFFINE = "affine"
    NETWORK = "network"


def mean_mode(value: str | MeanMode, likelihood: object = None, g_prior: bool = False) -> MeanMode:
    """Validate a mean mode; ``"auto"``: ``network``, but a classifier's under the g-prior ``tangent``."""
    if value == "auto":
        tangent = g_prior and not isinstance(likelihood, Gaussian)
        return MeanMode.TANGENT if tangent else MeanMode.NETWORK
    try:
        return MeanMode(value)
    except ValueError as err:
        valid = ", ".join(repr(m.value) for m in MeanMode)
        raise ValueError(f"`mean` must be 'auto' or one of {valid}, got {value!r}.") from err


@dataclass(frozen=True)
class MeanProblem:
    """The objective ``F(w)`` whose minimiser is ``θ̄``.

    Attributes:
        model: The linear-Gaussian model (its targets ``y`` are used here).
        mode: ``tangent`` or ``affine`` (``network`` needs no problem).
        anchor: ``[D]`` network weights ``w*`` in the features' coordinates (affine offset).
    """

    model: LinearGaussianModel
    mode: MeanMode
    anchor: Tensor

    def outputs(self, x: Tensor, w: Tensor) -> Tensor:
        """``g(w)`` on a batch for ``[K, D]`` weights: ``[K, b, C]``."""
        if self.mode is MeanMode.TANGENT:
            return self.model.features.jvp(x, w)[1]
        f0, jw = self.model.features.jvp(x, torch.cat([w, self.anchor[None]]))
        return jw[:-1] + (f0 - jw[-1])

    def value(self, w: Tensor) -> float:
        """``F(w)`` for one ``[D]`` vector (one data pass)."""
        nll = torch.zeros((), dtype=torch.float64, device=w.device)
        for _, x, y in self.model.data.batches():
            nll -= self.model.likelihood.log_prob(self.outputs(x, w[None])[0], y).sum().double()
        return 0.5 * float((self.model.precision.prior * w * w).sum()) + float(
            self.model.data.all_reduce(nll)
        )

    def gradient(self, w: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``∇F(w)`` ``[D]`` and the outputs ``g_b(w)`` of every batch (one data pass)."""
        grad, outputs = torch.zeros_like(w), []
        for _, x, y in self.model.data.batches():
            g = self.outputs(x, w[None])[0]
            _, pull = self.model.features.pullback(x)
            grad += pull(self.model.likelihood.nll_grad(g, y)[None])[0]
            outputs.append(g)
        return self.model.precision.prior * w + self.model.data.all_reduce(grad), outputs

    def hessian_vec(self, outputs: list[Tensor], v: Tensor) -> Tensor:
        """``Σ_i Φ_iᵀ B_i(g_i) Φ_i v_k + A v_k`` at cached outputs ``g``: ``[K, D]``."""
        features, likelihood = self.model.features, self.model.likelihood
        out = torch.zeros_like(v)
        for (_, x, _), g in zip(self.model.data.batches(), outputs, strict=True):
            _, jv = features.jvp(x, v)
            _, pull = features.pullback(x)
            out += pull(likelihood.hessian_vec(g, jv))
        return self.model.precision.prior * v + self.model.data.all_reduce(out)


def as_preconditioner(preconditioner: Tensor | PreconditionerLike) -> PreconditionerLike:
    """A preconditioner; a ``[D]`` tensor is the diagonal of a Jacobi one."""
    if isinstance(preconditioner, Tensor):
        return Preconditioner.diagonal(preconditioner)
    return preconditioner


def sgd_mean(
    problem: MeanProblem,
    init: Tensor,
    config: SGD,
    preconditioner: Tensor | PreconditionerLike,
    seed: int = 0,
    progress: bool | None = None,
) -> SolveResult:
    """Minimise ``F`` by minibatch SGD from ``init`` ``[D]``; returns ``θ̄`` as ``[1, D]``.

    The step is set by the largest of the curvatures at the starting outputs and at zero outputs
    (uniform class probabilities, where the softmax curvature of most points is largest).
    """
    start = time.perf_counter()
    model = problem.model
    n_points = config.curvature_points or config.batch_size or model.data.batch_size
    jacobi = as_preconditioner(preconditioner)
    curvatures = [
        estimate_top_curvature(
            model,
            n_points,
            config.curvature_iters,
            seeded_generator(seed, "sgd-mean", k),
            jacobi,
            at,
        )
        for k, at in enumerate(
            (lambda x, f0: problem.outputs(x, init[None])[0], lambda x, f0: torch.zeros_like(f0))
        )
    ]

    def residual(idx: Tensor, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        return model.likelihood.nll_grad(problem.outputs(x, w), y)

    scale = float(problem.gradient(torch.zeros_like(init))[0].norm()) or 1.0
    initial = torch.tensor([float(problem.gradient(init)[0].norm()) / scale])

    def attempt(cfg: SGD) -> tuple[Tensor, int, Tensor]:
        w, n_steps = stochastic_minimise(
            model,
            residual,
            torch.zeros_like(init),
            init[None],
            config=cfg,
            preconditioner=jacobi,
            curvature=max(curvatures),
            generator=seeded_generator(seed, "sgd-mean", cfg.lr),
            progress=progress,
            desc="mean (SGD)",
        )
        relative = torch.tensor([float(problem.gradient(w[0])[0].norm()) / scale])
        check_residuals(relative, initial, cfg, "mean (SGD)")
        return w, n_steps, relative

    w, n_steps, relative = with_backoff(attempt, config, "mean (SGD)")
    info = SolveInfo(config.name, n_steps, relative, time.perf_counter() - start, max(curvatures))
    return SolveResult(w, info)


def solve_mean(
    problem: MeanProblem,
    solver: Newton | SGD,
    init: Tensor,
    preconditioner: Tensor | PreconditionerLike,
    seed: int = 0,
    progress: bool | None = None,
) -> SolveResult:
    """``θ̄`` by the chosen solver (``Newton`` or ``SGD``), warm-started at ``init`` ``[D]``.

    ``preconditioner``: ``P ≈ ∇²F``, a preconditioner (``solve``, ``half``, ``half_t``) or the
    ``[D]`` diagonal of a Jacobi one.
    """
    preconditioner = as_preconditioner(preconditioner)
    if isinstance(solver, Newton):
        return newton_mean(problem, init, solver, preconditioner, progress)
    if isinstance(solver, SGD):
        return sgd_mean(problem, init, solver, preconditioner, seed, progress)
    raise TypeError(f"`mean_solver` must be lla.Newton(...) or lla.SGD(...), got {solver!r}.")


def mean_outputs(
    model: LinearGaussianModel, mode: MeanMode, anchor: Tensor, mean: Tensor
) -> Callable[[Tensor], Tensor]:
    """``x ↦ g(θ̄)`` on a batch: ``[b, C]`` (the network's outputs for ``"network"``)."""
    if mode is MeanMode.NETWORK:
        return model.features.forward
    problem = MeanProblem(model, mode, anchor)
    return lambda x: problem.outputs(x, mean[None])[0]


def posterior_mean(
    model: LinearGaussianModel,
    mode: MeanMode,
    anchor: Tensor,
    solve: Callable[[MeanProblem], Tensor],
) -> tuple[Tensor, float | None]:
    """``θ̄`` ``[D]`` (``solve``'s, or ``anchor`` for ``"network"``) and ``‖y − g(θ̄)‖²``.

    The residual is computed (one extra pass) for a Gaussian likelihood only, else ``None``.
    """
    mean = anchor if mode is MeanMode.NETWORK else solve(MeanProblem(model, mode, anchor))
    if not isinstance(model.likelihood, Gaussian):
        return mean, None
    outputs = mean_outputs(model, mode, anchor, mean)
    residual = torch.zeros((), dtype=torch.float64, device=mean.device)
    for _, x, y in model.data.batches():
        residual += (outputs(x) - y.reshape(len(y), -1).to(mean.dtype)).square().sum().double()
    return mean, float(model.data.all_reduce(residual))


def log_likelihood(
    model: LinearGaussianModel, mode: MeanMode, anchor: Tensor, mean: Tensor
) -> float:
    """``Σ_i log p(y_i | g_i(θ̄))`` over the training set."""
    outputs = mean_outputs(model, mode, anchor, mean)
    total = torch.zeros((), dtype=torch.float64, device=mean.device)
    for _, x, y in model.data.batches():
        total += model.likelihood.log_prob(outputs(x), y).sum().double()
    return float(model.data.all_reduce(total))
