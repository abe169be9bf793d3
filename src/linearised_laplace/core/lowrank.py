r"""Diagonal-plus-low-rank matrices in a factored form, and the randomised Nyström sketch.

A :class:`Preconditioner` is held in the factored form

$$ P = E^{1/2} (I + U Λ U^\top) E^{1/2}, \qquad U^\top U = I_r, $$

with a positive diagonal ``E`` and ``r ≥ 0`` orthonormal directions, so that ``P^{-1}`` and a
square root ``C`` with ``C Cᵀ = P^{-1}`` are both cheap:

$$ P^{-1} = E^{-1/2} (I − U \tfrac{Λ}{1+Λ} U^\top) E^{-1/2}, \qquad
   C = E^{-1/2} (I − U (1 − (1+Λ)^{-1/2}) U^\top). $$

:func:`nystrom` sketches a PSD operator from products alone (Tropp et al., 2017).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LowRank:
    """A PSD low-rank matrix ``V diag(λ) Vᵀ`` with ``V`` ``[D, r]`` and ``λ ≥ 0`` ``[r]``."""

    vectors: Tensor
    values: Tensor

    @property
    def rank(self) -> int:
        """``r``."""
        return self.values.numel()

    def scaled(self, factor: float) -> LowRank:
        """``factor · V diag(λ) Vᵀ``."""
        return LowRank(self.vectors, self.values * factor)

    def diagonal(self) -> Tensor:
        """``diag(V diag(λ) Vᵀ)``: ``[D]``."""
        return (self.vectors.square() * self.values).sum(-1)


def nystrom(
    matvec: MatVec,
    n: int,
    rank: int,
    *,
    oversample: int = 10,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    max_rank: int | None = None,
    grow: Callable[[int, float], bool] | None = None,
) -> LowRank:
    """Randomised Nyström approximation of a symmetric PSD operator from block products.

    Tropp, Yurtsever, Udell & Cevher (2017), Alg. 3: for a test matrix ``Ω`` with ``ℓ = rank +
    oversample`` orthonormal columns, ``Y = G Ω`` and the approximation ``Y (Ωᵀ Y)^+ Yᵀ ⪯ G``,
    computed stably with a small shift. Its top ``rank`` eigenpairs are returned. When ``ℓ ≥ n``
    the operator is applied to the identity, which is exact.

    With ``max_rank`` and ``grow`` the sketch grows (as in Frangella, Tropp & Udell's adaptive
    Nyström, 2023): while ``grow(r, λ_r)`` holds for its rank and smallest kept eigenvalue and
    ``r < max_rank``, the rank doubles (capped at ``max_rank``), and only the new columns of
    ``Ω``, orthogonal to the old ones, are multiplied by ``G``: the products cost ``ℓ`` columns in
    all, as one sketch of the final rank would. For ``P = I + G_r`` (a prior-whitened GGN)
    ``1 + λ_r`` bounds the condition number of ``P^{-1}(I + G)`` up to the sketch's error.

    Args:
        matvec: ``Z [k, n] ↦ G Z`` row-wise.
        n: Dimension.
        rank: Eigenpairs kept (the first sketch's, with ``max_rank``).
        oversample: Extra test vectors.
        generator: For ``Ω``.
        dtype: dtype of the products (the small linear algebra runs in float64).
        device: Their device.
        max_rank: The largest rank the sketch may grow to.
        grow: ``(r, λ_r) ↦`` whether to double the rank (``None``: no growth).
    """
    omega = torch.empty(n, 0, dtype=torch.float64, device=device)
    y = torch.empty_like(omega)
    while True:
        width = min(rank + oversample, n)
        new = _test_columns(omega, width - omega.shape[1], n, generator)
        omega = torch.cat([omega, new], dim=1)
        y = torch.cat([y, matvec(new.T.to(dtype).contiguous()).double().T], dim=1)  # [n, ℓ]
        growable = grow is not None and max_rank is not None and rank < min(max_rank, n)
        if growable and width == n:  # exact already: keep what growing could have
            return _nystrom_core(omega, y, min(max_rank, n), dtype)
        sketch = _nystrom_core(omega, y, rank, dtype)
        if not growable or not grow(rank, float(sketch.values[-1])):
            return sketch
        rank = min(2 * rank, max_rank)


def _test_columns(omega: Tensor, count: int, n: int, generator) -> Tensor:
    """``count`` orthonormal columns orthogonal to ``omega`` ``[n, ℓ]`` (the identity's if all)."""
    if count == n:
        return torch.eye(n, dtype=torch.float64, device=omega.device)
    gaussian = torch.randn(n, count, generator=generator, dtype=torch.float64).to(omega.device)
    for _ in range(2):  # twice is enough (Giraud et al., 2005)
        gaussian -= omega @ (omega.T @ gaussian)
    return torch.linalg.qr(gaussian)[0]


def _nystrom_core(omega: Tensor, y: Tensor, rank: int, dtype: torch.dtype) -> LowRank:
    """The top ``rank`` eigenpairs of ``Y (Ωᵀ Y)^+ Yᵀ``, shifted for stability."""
    n = omega.shape[0]
    shift = torch.finfo(dtype).eps * n**0.5 * float(y.norm())
    y = y + shift * omega
    small = omega.T @ y
    factor = torch.linalg.cholesky(0.5 * (small + small.T))
    b = torch.linalg.solve_triangular(factor, y.T, upper=False).T  # y C^{-T}
    vectors, sigma, _ = torch.linalg.svd(b, full_matrices=False)
    values = (sigma.square() - shift).clamp_min(0.0)
    keep = min(rank, omega.shape[1])
    return LowRank(vectors[:, :keep].to(dtype), values[:keep].to(dtype))


class PreconditionerLike(Protocol):
    """``P ≈ H`` as the solvers apply it, row-wise on ``[K, D]``.

    ``solve`` applies ``P^{-1}``, ``half`` a ``C`` with ``C Cᵀ = P^{-1}`` and ``half_t`` its transpose.
    """

    def solve(self, r: Tensor) -> Tensor:  # noqa: D102
        ...

    def half(self, w: Tensor) -> Tensor:  # noqa: D102
        ...

    def half_t(self, w: Tensor) -> Tensor:  # noqa: D102
        ...


@dataclass(frozen=True)
class Preconditioner:
    """``P = E^{1/2} (I + U Λ Uᵀ) E^{1/2}`` (see the module docstring).

    Attributes:
        inv_sqrt_diag: ``E^{-1/2}`` ``[D]``.
        directions: ``U`` ``[D, r]``, orthonormal.
        values: ``Λ`` ``[r]``, non-negative.
    """

    inv_sqrt_diag: Tensor
    directions: Tensor
    values: Tensor

    @classmethod
    def diagonal(cls, diag: Tensor) -> Preconditioner:
        """Jacobi: ``P = diag``."""
        return cls(diag.rsqrt(), diag.new_zeros(diag.numel(), 0), diag.new_zeros(0))

    @classmethod
    def diagonal_plus_low_rank(cls, diag: Tensor, low_rank: LowRank) -> Preconditioner:
        """``P = diag(d) + V diag(λ) Vᵀ``, refactored into the form above (a thin QR)."""
        if low_rank.rank == 0:
            return cls.diagonal(diag)
        inv_sqrt = diag.rsqrt()
        scaled = (inv_sqrt[:, None] * low_rank.vectors).double()  # E^{-1/2} V
        q, r = torch.linalg.qr(scaled)
        core = (r * low_rank.values.double()) @ r.T  # R Λ Rᵀ
        values, rotation = torch.linalg.eigh(0.5 * (core + core.T))
        dtype = diag.dtype
        return cls(inv_sqrt, (q @ rotation).to(dtype), values.clamp_min(0.0).to(dtype))

    @property
    def rank(self) -> int:
        """``r``."""
        return self.values.numel()

    def _inner(self, r: Tensor, weights: Tensor) -> Tensor:
        if self.rank == 0:
            return r
        return r - ((r @ self.directions) * weights) @ self.directions.T

    def solve(self, r: Tensor) -> Tensor:
        """``P^{-1} r`` row-wise for ``r`` ``[K, D]``."""
        inner = self._inner(r * self.inv_sqrt_diag, self.values / (1 + self.values))
        return inner * self.inv_sqrt_diag

    def half(self, w: Tensor) -> Tensor:
        """``C w`` row-wise, with ``C Cᵀ = P^{-1}``."""
        return self._inner(w, 1 - (1 + self.values).rsqrt()) * self.inv_sqrt_diag

    def half_t(self, w: Tensor) -> Tensor:
        """``Cᵀ w`` row-wise."""
        return self._inner(w * self.inv_sqrt_diag, 1 - (1 + self.values).rsqrt())
