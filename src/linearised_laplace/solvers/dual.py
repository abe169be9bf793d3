r"""Posterior samples in observation space ("dual"; pathwise conditioning), for ``n·C < D``.

With ``B_i = L_i L_iᵀ``, the kernel ``K = Φ A^{-1} Φᵀ`` (``nC × nC``, the NTK) and the same noise
``(θ_0, ν)`` as the primal sampler, Woodbury's identity turns ``ζ = H^{-1}(A θ_0 + Φᵀ L ν)`` into

$$ ζ = θ_0 − A^{-1} Φᵀ L\, w, \qquad (I + Lᵀ K L)\, w = Lᵀ Φ θ_0 − ν $$

(Wilson et al., ICML 2020, pathwise conditioning). ``I + LᵀKL ⪰ I`` is well posed even though
the softmax ``B`` is singular, and ``B^{-1}`` is never needed. A product with it is one VJP pass and
one JVP pass over the data; the unknowns ``w`` are ``K × n × C`` numbers instead of ``K × D``.
The system is solved by conjugate gradients, preconditioned with a randomised rank-``r`` Nyström
approximation of ``LᵀKL`` (``P = I + U Λ Uᵀ``, applied by Woodbury), by stochastic dual descent on
minibatches (:mod:`~linearised_laplace.solvers.sdd`), or exactly by Cholesky on small problems.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from ..core.linalg import block_conjugate_gradient, cholesky, conjugate_gradient
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource
from .base import SolveInfo, SolveResult, relative_norm
from .cg import CG
from .cholesky import Cholesky
from .covariance import DualCovariance
from .kernel import (
    dual_matrix,
    dual_pullback,
    dual_rhs,
    dual_rows,
    kernel_preconditioner,
    kernel_vec,
    observations,
)
from .preconditioner import sketch_ranks
from .sdd import SDD, stochastic_dual_descent

DualSolver = CG | Cholesky | SDD


def solve_system(
    model: LinearGaussianModel,
    rhs: Tensor,
    solver: DualSolver,
    init: Tensor | None = None,
    seed: int = 0,
    progress: bool | None = False,
    covariance: bool = False,
) -> tuple[Tensor, int, Tensor, DualCovariance | None]:
    """Solve ``(I + Lᵀ K L) w = b`` for ``b`` ``[K, n·C]``.

    Returns ``(w, steps, relative residuals, Σ)``; ``Σ``, the exact posterior covariance, only
    from a dense solve asked for it (``covariance=True``), else ``None``.
    """

    def matvec(w: Tensor) -> Tensor:
        return w + kernel_vec(model, w)

    if isinstance(solver, Cholesky):
        rows = dual_rows(model)
        factor = cholesky(dual_matrix(model, rows))
        w = torch.cholesky_solve(rhs.double().T, factor).T.to(rhs.dtype)
        prior = model.precision.prior64
        sigma = DualCovariance(prior, rows / prior.sqrt(), factor) if covariance else None
        return w, 0, relative_norm(matvec(w) - rhs, rhs), sigma
    if isinstance(solver, SDD):
        w, n_steps = stochastic_dual_descent(
            model, rhs, solver, init=init, seed=seed, progress=progress
        )
        return w, n_steps, relative_norm(matvec(w) - rhs, rhs), None
    if isinstance(solver, CG):
        rank, most = sketch_ranks(solver.preconditioner_rank, observations(model))
        precondition = kernel_preconditioner(model, rank, seed, most).solve if rank > 0 else None
        solve = block_conjugate_gradient if solver.block else conjugate_gradient
        return *solve(
            matvec,
            rhs,
            init,
            rtol=solver.tolerance(rhs.dtype),
            max_iter=solver.max_iter,
            preconditioner=precondition,
            progress=progress,
        ), None
    raise TypeError(
        f"The dual sampler solves with lla.CG(...), lla.SDD(...) or lla.Cholesky(), got "
        f"{type(solver).__name__}; "
        "SGD is for the primal space (space='primal')."
    )


def solve_dual(
    model: LinearGaussianModel,
    xi: Tensor,
    source: NoiseSource,
    solver: DualSolver,
    *,
    init: Tensor | None = None,
    seed: int = 0,
    progress: bool | None = False,
) -> tuple[SolveResult, Tensor]:
    """Zero-mean posterior samples by pathwise conditioning in observation space.

    Args:
        model: The linear-Gaussian model.
        xi: ``[K, D]`` standard-normal prior draws (``θ_0 = A^{-1/2} ξ``).
        source: The per-point noise ``ν`` (the same as the primal sampler's for the same seed).
        solver: :class:`~linearised_laplace.solvers.CG` (preconditioned with its
            ``preconditioner_rank``), :class:`~linearised_laplace.solvers.SDD` (minibatch) or
            :class:`~linearised_laplace.solvers.Cholesky` (dense).
        init: ``[K, n·C]`` warm start for CG or SDD.
        seed: Seeds the randomised preconditioner (and SDD's minibatch order).
        progress: Show a progress bar.

    Returns:
        The samples ``ζ`` ``[K, D]`` with diagnostics (relative residuals of the dual system),
        and the dual solution ``w`` ``[K, n·C]`` (a warm start for the next solve).
    """
    start = time.perf_counter()
    prior = model.precision.prior
    theta0 = xi / prior.sqrt()
    w, n_steps, residual, covariance = solve_system(
        model, dual_rhs(model, theta0, source), solver, init, seed, progress, covariance=True
    )
    samples = theta0 - dual_pullback(model, w) / prior
    info = dual_info(f"dual-{solver.name}", solver, n_steps, residual, start)
    return SolveResult(samples, info, covariance=covariance), w


def dual_info(name: str, solver: DualSolver, n_steps: int, residual: Tensor, start: float):
    """A dual solve's diagnostics; CG's and SDD's residuals are checked against their tolerance."""
    tolerance = solver.tolerance(residual.dtype) if isinstance(solver, CG | SDD) else None
    seconds = time.perf_counter() - start
    return SolveInfo(name, n_steps, residual, seconds, space="dual", tolerance=tolerance)


def gaussian_mean(
    model: LinearGaussianModel,
    targets: Callable[[Tensor, Tensor], Tensor],
    solver: DualSolver,
    seed: int = 0,
    progress: bool | None = False,
) -> SolveResult:
    r"""The mode of a Gaussian-likelihood linear model, solved in observation space.

    Minimising ``½ Σ_i ‖L_iᵀ(t_i − Φ_i w)‖² + ½ wᵀ A w`` gives, by Woodbury,
    ``w̄ = A^{-1} Φᵀ L u`` with ``(I + Lᵀ K L) u = Lᵀ t``: ``n·C`` unknowns instead of ``D``.

    Args:
        model: A linear-Gaussian model with a Gaussian likelihood.
        targets: ``(x, y) ↦ t`` ``[b, C]``, the regression targets of a batch (``y`` for the
            tangent model; ``y − f_0 + Φ w*`` for the affine one).
        solver: Solver of the dual system.
        seed: Seeds the randomised preconditioner.
        progress: Show a progress bar.

    Returns:
        ``w̄`` ``[1, D]`` with diagnostics.
    """
    start = time.perf_counter()
    rhs = torch.empty(
        1,
        len(model.data),
        model.n_outputs,
        dtype=model.features.dtype,
        device=model.features.device,
    )
    for idx, x, y in model.data.batches():
        f0 = model.features.forward(x)
        model.check_batch(x, y, f0)
        rhs[0, idx] = model.likelihood.factor_t_vec(f0, targets(x, y))
    u, n_steps, residual, _ = solve_system(
        model, rhs.reshape(1, -1), solver, seed=seed, progress=progress
    )
    mean = dual_pullback(model, u) / model.precision.prior
    return SolveResult(
        mean, dual_info(f"dual-mean-{solver.name}", solver, n_steps, residual, start)
    )


def dual_mean(
    problem, solver: DualSolver, seed: int = 0, progress: bool | None = False
) -> SolveResult:
    """:func:`gaussian_mean` of a :class:`~linearised_laplace.solvers.mean.MeanProblem` (Gaussian)."""
    zero = torch.zeros_like(problem.anchor)[None]

    def targets(x: Tensor, y: Tensor) -> Tensor:
        g = problem.outputs(x, zero)[0]
        return y.reshape(g.shape).to(g.dtype) - g

    return gaussian_mean(problem.model, targets, solver, seed, progress)
