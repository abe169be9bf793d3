"""Full-batch Newton-CG with Armijo backtracking for the linear model's posterior mean ``θ̄``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..core.linalg import conjugate_gradient
from ..core.lowrank import PreconditionerLike
from ..core.progress import expect_total, progress_bar
from .base import SolveInfo, SolveResult


class ConvexObjective(Protocol):
    """A smooth convex ``F(w)`` over ``[D]`` weights, such as the mean's (:mod:`.mean`)."""

    def value(self, w: Tensor) -> float:
        """``F(w)``."""

    def gradient(self, w: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``∇F(w)`` ``[D]`` and the per-batch outputs at ``w`` (reused by :meth:`hessian_vec`)."""

    def hessian_vec(self, outputs: list[Tensor], v: Tensor) -> Tensor:
        """``∇²F v_k`` ``[K, D]`` at the cached outputs."""


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
    problem: ConvexObjective,
    init: Tensor,
    config: Newton,
    preconditioner: PreconditionerLike,
    progress: bool | None = None,
) -> SolveResult:
    """Minimise ``F`` by Newton-CG from ``init`` ``[D]``; returns ``θ̄`` as ``[1, D]``.

    ``preconditioner``: ``P ≈ ∇²F`` with ``half`` and ``half_t`` (``C Cᵀ = P^{-1}``), as
    :class:`~linearised_laplace.core.lowrank.Preconditioner`; each Newton system is solved as
    ``Cᵀ ∇²F C u = −Cᵀ ∇F``, ``Δ = C u``.
    """
    start = time.perf_counter()
    w = init.clone()
    scale = float(problem.gradient(torch.zeros_like(w))[0].norm()) or 1.0
    # Gradients summed in floating point are accurate to about 100 ε relative: stop there.
    rtol = max(config.rtol, 100 * torch.finfo(w.dtype).eps)
    half, half_t = preconditioner.half, preconditioner.half_t
    iterations = 0
    steps, relative, first = 0, float("inf"), float("inf")
    with progress_bar(total=config.max_iter, enabled=progress, desc="mean (Newton-CG)") as bar:
        for steps in range(config.max_iter + 1):
            grad, outputs = problem.gradient(w)
            relative = float(grad.norm()) / scale
            if relative <= rtol or steps == config.max_iter:
                break
            first = relative if steps == 0 else first  # the stage's expected length follows it
            expect_total(bar, steps, first, relative, rtol, config.max_iter)
            # Inexact Newton: solve Cᵀ ∇²F C u = −Cᵀ g to relative accuracy min(0.5, √‖g‖), which
            # tightens as the gradient vanishes (superlinear convergence).
            u, n_iter, _ = conjugate_gradient(
                lambda v, outputs=outputs: half_t(problem.hessian_vec(outputs, half(v))),
                -half_t(grad[None]),
                rtol=max(1e-12, min(0.5, relative**0.5)),
                max_iter=config.cg_max_iter,
            )
            iterations += n_iter
            direction = half(u)[0]
            w, moved = _armijo(problem, w, grad, direction)
            bar.update()
            if not moved:  # no decrease is possible at this precision
                break
    info = SolveInfo(
        config.name,
        steps,
        torch.tensor([relative]),
        time.perf_counter() - start,
        reason=f"{steps} Newton steps, {iterations} CG iterations",
    )
    return SolveResult(w[None], info)


def _armijo(
    problem: ConvexObjective, w: Tensor, grad: Tensor, direction: Tensor
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
