r"""The posterior mean ``θ̄`` of the linear model: the weights that enter the MacKay update.

``θ̄`` minimises ``F(w) = Σ_i −log p(y_i | g_i(w)) + ½ wᵀ A w``, a convex problem, with outputs

* ``"tangent"`` (default; the seed paper's classification code): ``g_i(w) = Φ_i w``;
* ``"affine"`` (its tomography code): ``g_i(w) = f_0(x_i) + Φ_i (w − w*)``, ``w*`` the network's
  weights in the features' coordinates;
* ``"network"``: no solve, ``θ̄ = w*`` (the network's own weights, as laplace-torch uses).

Using the linear model's own mode rather than ``θ*`` matters: ``θ*`` is not a stationary point of the
linear model (early stopping, normalisation layers), and using it makes the MacKay ``α`` too small
and the predictive strongly underconfident (method-spec §4.2b).

Two solvers: full-batch Newton-CG (:class:`Newton`; precise, each CG iteration one data pass) and
minibatch SGD (:class:`~linearised_laplace.solvers.SGD`; the seed paper's choice, scalable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from ._progress import progress_bar
from .linalg import conjugate_gradient
from .linear_model import LinearGaussianModel
from .noise import seeded_generator
from .solvers.base import SolveInfo, SolveResult
from .solvers.preconditioner import Preconditioner
from .solvers.sgd import (
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


def mean_mode(value: str | MeanMode) -> MeanMode:
    """Validate a mean mode."""
    try:
        return MeanMode(value)
    except ValueError as err:
        valid = ", ".join(repr(m.value) for m in MeanMode)
        raise ValueError(f"`mean` must be one of {valid}, got {value!r}.") from err


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
        return 0.5 * float((self.model.prior_diag() * w * w).sum()) + float(
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
        return self.model.prior_diag() * w + self.model.data.all_reduce(grad), outputs

    def hessian_vec(self, outputs: list[Tensor], v: Tensor) -> Tensor:
        """``Σ_i Φ_iᵀ B_i(g_i) Φ_i v_k + A v_k`` at cached outputs ``g``: ``[K, D]``."""
        features, likelihood = self.model.features, self.model.likelihood
        out = torch.zeros_like(v)
        for (_, x, _), g in zip(self.model.data.batches(), outputs, strict=True):
            _, jv = features.jvp(x, v)
            _, pull = features.pullback(x)
            out += pull(likelihood.hessian_vec(g, jv))
        return self.model.prior_diag() * v + self.model.data.all_reduce(out)


@dataclass(frozen=True)
class Newton:
    """Full-batch Newton-CG for ``θ̄`` with Armijo backtracking.

    Each Newton step solves ``∇²F Δ = −∇F`` by Jacobi-preconditioned conjugate gradients (each CG
    iteration is one data pass); for a Gaussian likelihood ``F`` is quadratic and one accurate step
    suffices.

    Args:
        rtol: Stop when ``‖∇F(w)‖ ≤ rtol · ‖∇F(0)‖`` (or at ``100 ε`` of the dtype, if larger).
        max_iter: Newton steps at most.
        cg_max_iter: CG iterations per Newton step at most.
    """

    rtol: float = 1e-6
    max_iter: int = 50
    cg_max_iter: int = 500
    name = "newton"


def newton_mean(
    problem: MeanProblem,
    init: Tensor,
    config: Newton,
    preconditioner: Tensor,
    progress: bool | None = None,
) -> SolveResult:
    """Minimise ``F`` by Newton-CG from ``init`` ``[D]``; returns ``θ̄`` as ``[1, D]``."""
    start = time.perf_counter()
    w = init.clone()
    scale = float(problem.gradient(torch.zeros_like(w))[0].norm()) or 1.0
    # Gradients summed in floating point are accurate to about 100 ε relative: stop there.
    rtol = max(config.rtol, 100 * torch.finfo(w.dtype).eps)
    inv_sqrt = preconditioner.rsqrt()
    steps, relative = 0, float("inf")
    with progress_bar(total=config.max_iter, enabled=progress, desc="mean (Newton-CG)") as bar:
        for steps in range(config.max_iter + 1):
            grad, outputs = problem.gradient(w)
            relative = float(grad.norm()) / scale
            if relative <= rtol or steps == config.max_iter:
                break
            # Inexact Newton: solve S ∇²F S u = −S g (S = P^{-1/2}, Δ = S u) to relative accuracy
            # min(0.5, √‖g‖), which tightens as the gradient vanishes (superlinear convergence).
            u, _, _ = conjugate_gradient(
                lambda v, outputs=outputs: inv_sqrt * problem.hessian_vec(outputs, inv_sqrt * v),
                -(inv_sqrt * grad)[None],
                rtol=max(1e-12, min(0.5, relative**0.5)),
                max_iter=config.cg_max_iter,
            )
            direction = inv_sqrt * u[0]
            w, moved = _armijo(problem, w, grad, direction)
            bar.update()
            if not moved:  # no decrease is possible at this precision
                break
    info = SolveInfo(config.name, steps, torch.tensor([relative]), time.perf_counter() - start)
    return SolveResult(w[None], info)


def _armijo(
    problem: MeanProblem, w: Tensor, grad: Tensor, direction: Tensor
) -> tuple[Tensor, bool]:
    """Backtrack from the full Newton step; returns the new point and whether it moved."""
    slope = float(grad @ direction)
    if slope >= 0:  # not a descent direction (CG stopped too early): take a gradient step
        direction, slope = -grad, -float(grad @ grad)
    current, t = problem.value(w), 1.0
    for _ in range(30):
        candidate = w + t * direction
        if problem.value(candidate) <= current + 1e-4 * t * slope:
            return candidate, True
        t *= 0.5
    return w, False


def sgd_mean(
    problem: MeanProblem,
    init: Tensor,
    config: SGD,
    preconditioner: Tensor,
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
    jacobi = Preconditioner.diagonal(preconditioner)
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
    preconditioner: Tensor,
    seed: int = 0,
    progress: bool | None = None,
) -> SolveResult:
    """``θ̄`` by the chosen solver (``Newton`` or ``SGD``), warm-started at ``init`` ``[D]``."""
    if isinstance(solver, Newton):
        return newton_mean(problem, init, solver, preconditioner, progress)
    if isinstance(solver, SGD):
        return sgd_mean(problem, init, solver, preconditioner, seed, progress)
    raise TypeError(f"`mean_solver` must be lla.Newton(...) or lla.SGD(...), got {solver!r}.")
