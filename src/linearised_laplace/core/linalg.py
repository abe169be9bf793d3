"""Matrix-free linear algebra on batches of vectors ``[K, D]``: (block) conjugate gradients and Lanczos."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import blas
from torch import Tensor

from .progress import expect_total, progress_bar

MatVec = Callable[[Tensor], Tensor]


def conjugate_gradient(
    matvec: MatVec,
    rhs: Tensor,
    x0: Tensor | None = None,
    *,
    rtol: float = 1e-10,
    max_iter: int = 1000,
    preconditioner: MatVec | None = None,
    progress: bool | None = False,
) -> tuple[Tensor, int, Tensor]:
    """Solve ``H x_k = b_k`` for a symmetric positive-definite ``H``, one (P)CG per row.

    Args:
        matvec: ``Z [K, n] ↦ H Z`` row-wise.
        rhs: ``[K, n]`` right-hand sides.
        x0: Optional ``[K, n]`` initial guess (warm start); rows whose residual exceeds ``‖b‖``
            start from zero instead.
        rtol: Stop when every relative residual ``‖b − H x‖ / ‖b‖`` is below this.
        max_iter: Iteration cap.
        preconditioner: ``R ↦ P^{-1} R`` row-wise for an SPD ``P ≈ H``; none by default.
        progress: A progress bar with the largest relative residual (``None``: on a terminal).

    Returns:
        ``(x [K, n], iterations, relative residuals [K])``.
    """
    apply = (lambda r: r) if preconditioner is None else preconditioner
    x, r = _start(matvec, rhs, x0)
    z = apply(r)
    p = z.clone()
    rz = (r * z).sum(-1)
    tiny = torch.finfo(rhs.dtype).tiny
    norm_b = rhs.norm(dim=-1).clamp_min(tiny)
    n_iter = 0
    bar = progress_bar(total=max_iter, enabled=progress, desc="conjugate gradients")
    first = None
    while n_iter < max_iter:
        relative = r.norm(dim=-1) / norm_b
        active = relative > rtol  # converged rows are frozen: their updates would be round-off
        if not bool(active.any()):
            break
        worst = float(relative.max())
        first = worst if first is None else first
        expect_total(bar, n_iter, first, worst, rtol, max_iter)
        bar.set_postfix(residual=f"{worst:.1e}", refresh=False)
        bar.update()
        hp = matvec(p)
        curvature = (p * hp).sum(-1)
        alpha = torch.where(active & (curvature > tiny), rz / curvature.clamp_min(tiny), 0.0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * hp
        z = apply(r)
        rz_new = (r * z).sum(-1)
        beta = torch.where(active & (rz > tiny), rz_new / rz.clamp_min(tiny), 0.0)
        p = torch.where(active[:, None], z + beta[:, None] * p, p)
        rz = torch.where(active, rz_new, rz)
        n_iter += 1
    bar.close()
    return x, n_iter, r.norm(dim=-1) / norm_b


def block_conjugate_gradient(
    matvec: MatVec,
    rhs: Tensor,
    x0: Tensor | None = None,
    *,
    rtol: float = 1e-10,
    max_iter: int = 1000,
    preconditioner: MatVec | None = None,
    progress: bool | None = False,
) -> tuple[Tensor, int, Tensor]:
    """Solve ``H X = B`` for all ``K`` rows at once by block (P)CG over a shared Krylov space.

    Each iteration applies ``H`` to a block of up to ``K`` search directions, as
    :func:`conjugate_gradient` does, but every row's iterate minimises its energy-norm error over
    the span of *all* rows' directions so far, so the rows share what each learns about ``H``'s
    spectrum: the iteration count falls roughly as the condition number with the ``K − 1``
    extreme eigenvalues removed. Directions are orthonormalised each iteration, and nearly
    dependent ones dropped (breakdown-free block CG, Ji & Li 2017), so ``H`` is applied to fewer
    than ``K`` rows once the block loses rank. Only the ``K × K`` algebra runs in float64.

    Args and returns as :func:`conjugate_gradient`.
    """
    apply = (lambda r: r) if preconditioner is None else preconditioner
    x, r = _start(matvec, rhs, x0)
    norm_b = rhs.norm(dim=-1).clamp_min(torch.finfo(rhs.dtype).tiny)
    p = _orthonormal_rows(apply(r))
    n_iter, first = 0, None
    bar = progress_bar(total=max_iter, enabled=progress, desc="block conjugate gradients")
    while n_iter < max_iter and p.shape[0]:
        relative = r.norm(dim=-1) / norm_b
        worst = float(relative.max())
        if worst <= rtol:
            break
        first = worst if first is None else first
        expect_total(bar, n_iter, first, worst, rtol, max_iter)
        bar.set_postfix(residual=f"{worst:.1e}", directions=p.shape[0], refresh=False)
        bar.update()
        hp = matvec(p)
        factor = _gram_factor(p, hp)
        step = torch.cholesky_solve(_dots(p, r), factor).T.to(x.dtype)  # [K, s]
        x += step @ p
        r -= step @ hp
        z = apply(r)
        beta = torch.cholesky_solve(_dots(hp, z), factor).T.to(z.dtype)  # [K, s]
        p = _orthonormal_rows(z - beta @ p)
        n_iter += 1
    bar.close()
    return x, n_iter, r.norm(dim=-1) / norm_b


def _start(matvec: MatVec, rhs: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The first iterate and residual ``[K, n]``: ``x0`` where given, zero for rows it worsens."""
    if x0 is None:
        return torch.zeros_like(rhs), rhs.clone()
    x = x0.clone()
    r = rhs - matvec(x)
    cold = r.norm(dim=-1) > rhs.norm(dim=-1)  # a warm start worse than zero: start from zero
    x[cold], r[cold] = 0.0, rhs[cold]
    return x, r


def _orthonormal_rows(rows: Tensor) -> Tensor:
    """A basis ``[s, n]`` (s ≤ K) of the span of ``rows`` ``[K, n]``, orthonormal by its Gram.

    Rows are scaled to unit length first, so that a row is dropped for being nearly dependent on
    the others (a singular value below ``√eps``), not for being short.
    """
    norms = rows.norm(dim=-1)
    rows = rows[norms > 0] / norms[norms > 0, None]
    if not rows.shape[0]:
        return rows
    eigenvalues, vectors = torch.linalg.eigh(_dots(rows, rows))
    keep = eigenvalues > eigenvalues[-1] * torch.finfo(rows.dtype).eps
    return (vectors[:, keep] / eigenvalues[keep].sqrt()).T.to(rows.dtype) @ rows


def _gram_factor(p: Tensor, hp: Tensor) -> Tensor:
    """Cholesky factor of ``P H Pᵀ`` ``[s, s]`` in float64, symmetrised and jittered if needed."""
    gram = _dots(p, hp)
    gram = (gram + gram.T) / 2
    factor, info = torch.linalg.cholesky_ex(gram)
    if info:
        jitter = 1e-12 * float(gram.diagonal().abs().max())
        factor = torch.linalg.cholesky(gram + jitter * torch.eye(len(gram), dtype=gram.dtype))
    return factor


def _dots(a: Tensor, b: Tensor, chunk: int = 1 << 16) -> Tensor:
    """``a bᵀ`` ``[s, K]`` summed in float64, ``chunk`` columns at a time (no float64 copy of ``a``)."""
    total = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[1], chunk):
        total += a[:, start : start + chunk].double() @ b[:, start : start + chunk].double().T
    return total


def top_eigenvalue(
    matvec: MatVec,
    n: int,
    *,
    n_iter: int = 20,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> float:
    """Largest eigenvalue of a symmetric PSD operator by Lanczos with full reorthogonalisation.

    The top Ritz value approaches the largest eigenvalue from below, much faster than power
    iteration; ``n_iter = 20`` is typically within a few percent. On reaching an invariant subspace
    it restarts from a random vector orthogonal to it.

    Args:
        matvec: ``Z [1, n] ↦ H Z``.
        n: Dimension.
        n_iter: Lanczos steps (matrix-vector products).
        generator: Random start vector's generator.
        dtype: dtype of the vectors.
        device: Their device.

    Returns:
        The estimate of ``λ_max(H)``.
    """

    def orthogonal(w: Tensor, basis: list[Tensor]) -> Tensor:
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            for q in basis:
                w = w - (w @ q) * q
        return w

    def draw() -> Tensor:
        return torch.randn(n, generator=generator, dtype=torch.float64).to(
            dtype=dtype, device=device
        )

    v = draw()
    basis = [v / v.norm()]
    alphas, betas = [], []
    for _ in range(min(n_iter, n)):
        w = matvec(basis[-1][None])[0]
        alphas.append(float(w @ basis[-1]))
        if len(basis) == n:
            break
        w = orthogonal(w, basis)
        beta = float(w.norm())
        if beta <= 1e-10 * max(abs(a) for a in alphas):
            # an invariant subspace, which may miss the top eigenvector: restart orthogonally to it
            # (a zero coupling in the tridiagonal matrix), rather than stop on a round-off decision
            w, beta = orthogonal(draw(), basis), 0.0
            basis.append(w / w.norm())
        else:
            basis.append(w / beta)
        betas.append(beta)
    k = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: k - 1], dtype=torch.float64)
    tri += torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(tri)[-1])


def top_eigenpairs(
    matvec: MatVec,
    n: int,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Top ``rank`` eigenpairs of a symmetric PSD operator by randomised subspace iteration.

    Halko, Martinsson and Tropp (2011), Alg. 4.4 + 5.3: ``Q = orth(H^{q+1} Ω)`` for a Gaussian
    ``Ω`` ``[n, rank + oversample]``, then the eigenpairs of ``Qᵀ H Q``. When ``rank + oversample``
    reaches ``n`` the operator is applied to the identity and decomposed exactly.

    Args:
        matvec: ``Z [k, n] ↦ H Z`` row-wise.
        n: Dimension.
        rank: Number of eigenpairs.
        oversample: Extra random directions.
        power_iters: Subspace iterations ``q``.
        generator: For ``Ω``.
        dtype: dtype of the products (the small eigenproblem runs in float64).
        device: Their device.

    Returns:
        Eigenvalues ``[rank]`` (descending) and eigenvectors ``[n, rank]`` (float64).
    """
    width = rank + oversample
    if width >= n:
        basis = torch.eye(n, dtype=dtype, device=device)
        power_iters = 0
    else:
        omega = torch.randn(width, n, generator=generator, dtype=torch.float64)
        basis = torch.linalg.qr(matvec(omega.to(dtype=dtype, device=device)).double().T)[0].T
    for _ in range(power_iters):
        basis = torch.linalg.qr(matvec(basis.to(dtype)).double().T)[0].T
    basis = basis.double()
    small = basis @ matvec(basis.to(dtype)).double().T  # Qᵀ H Q, [width, width]
    values, vectors = torch.linalg.eigh(0.5 * (small + small.T))
    order = values.argsort(descending=True)[:rank]
    return values[order], basis.T @ vectors[:, order]


def add_gram(total: Tensor, rows: Tensor, buffer: Tensor | None = None) -> Tensor | None:
    r"""``total += rowsᵀ rows`` in place, for ``rows`` ``[K, P]`` and a symmetric ``total`` ``[P, P]``.

    On the CPU this is BLAS ``syrk`` (half the flops of a product) in the precision of ``rows``,
    writing the upper triangle of ``total`` only: finish with :func:`symmetrise_upper`. A float32
    ``rows`` is summed in ``buffer`` (float32 ``[P, P]``, made if ``None``) and added to a float64
    ``total``, so the product runs at float32 speed and the sum over batches in float64. Elsewhere
    (CUDA) it is a full ``addmm`` in ``total``'s dtype (and :func:`symmetrise_upper` a no-op).
    Returns the buffer, for the next call.
    """
    if total.device.type != "cpu":
        total.addmm_(rows.T.to(total.dtype), rows.to(total.dtype))
        return buffer
    syrk = blas.dsyrk if rows.dtype == torch.float64 else blas.ssyrk
    rows = rows.detach().to(torch.float64 if rows.dtype == torch.float64 else torch.float32)
    target = total
    if rows.dtype != total.dtype:
        target = buffer if buffer is not None else torch.empty_like(total, dtype=rows.dtype)
    # The transpose of a row-major [P, P] tensor is a column-major view, which BLAS writes in place;
    # its lower triangle is the upper triangle of ``target``.
    out = np.asarray(target.T.numpy())
    beta = 1.0 if target is total else 0.0
    result = syrk(1.0, rows.contiguous().T.numpy(), beta=beta, c=out, overwrite_c=True, lower=True)
    if not np.shares_memory(result, out):  # BLAS worked on a copy: bring it back
        target.copy_(torch.from_numpy(result).T)
    if target is not total:
        total.add_(target)
        return target
    return buffer


def symmetrise_upper(matrix: Tensor, block: int = 2048) -> Tensor:
    """Copy the upper triangle of a square ``matrix`` onto its lower one, in place, block by block."""
    n = matrix.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        tile = matrix[start:stop, start:stop]
        tile.copy_(tile.triu() + tile.triu(1).T)
        matrix[stop:, start:stop] = matrix[start:stop, stop:].T
    return matrix


def add_diagonal(matrix: Tensor, diagonal: Tensor) -> Tensor:
    """``matrix + diag(diagonal)`` as a new tensor, without building ``diag(diagonal)``."""
    result = matrix.clone()
    result.diagonal().add_(diagonal.to(matrix.dtype))
    return result


def cholesky(precision: Tensor) -> Tensor:
    """Lower Cholesky factor of a posterior precision, with an actionable error if it fails.

    Raises:
        torch.linalg.LinAlgError: The matrix is not numerically positive definite (EM turns this
            into a :class:`~linearised_laplace.DivergenceError` that names the step and prior).
    """
    factor, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0:
        raise torch.linalg.LinAlgError(
            "The posterior precision is not numerically positive definite (Cholesky failed at "
            f"column {int(info)}). Increase `prior_precision` or use float64 parameters."
        )
    return factor


def cholesky_solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``H ζ_k = b_k`` row-wise given ``H = R Rᵀ``: ``[K, D]`` (float64)."""
    return torch.cholesky_solve(rhs.to(factor.dtype).T, factor).T


def whiten(factor: Tensor, jac: Tensor) -> Tensor:
    """``J R^{-T}`` for ``J`` ``[N, C, P]`` and ``H = R Rᵀ``, so that ``J H^{-1} Jᵀ = W Wᵀ``."""
    n, c, p = jac.shape
    half = torch.linalg.solve_triangular(factor, jac.reshape(n * c, p).T, upper=False)
    return half.T.reshape(n, c, p)


class CholeskyPreconditioner:
    """``P = R Rᵀ`` from a dense lower Cholesky factor ``R`` ``[D, D]``: ``P^{-1}`` exactly.

    The interface of :class:`~linearised_laplace.core.lowrank.Preconditioner`, with ``C = R^{-T}``
    (``C Cᵀ = P^{-1}``); results are cast to the argument's dtype.
    """

    def __init__(self, factor: Tensor):
        self.factor = factor

    def solve(self, r: Tensor) -> Tensor:
        """``P^{-1} r`` row-wise for ``r`` ``[K, D]``."""
        return cholesky_solve(self.factor, r).to(r.dtype)

    def half(self, w: Tensor) -> Tensor:
        """``C w = R^{-T} w`` row-wise."""
        rows = w.to(self.factor.dtype).T
        return torch.linalg.solve_triangular(self.factor.T, rows, upper=True).T.to(w.dtype)

    def half_t(self, w: Tensor) -> Tensor:
        """``Cᵀ w = R^{-1} w`` row-wise."""
        rows = w.to(self.factor.dtype).T
        return torch.linalg.solve_triangular(self.factor, rows, upper=False).T.to(w.dtype)
