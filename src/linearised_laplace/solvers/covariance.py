r"""The exact posterior covariance ``Σ = H^{-1}`` that a dense solve leaves behind.

A Cholesky solve factorises either ``H`` itself (primal) or the dual matrix ``I + QᵀQ`` with
``Q = A^{-1/2} Φᵀ L`` (``D × nC``). Either way ``Σ`` is then known exactly, so a sampler on that
path reads its diagonal (the exact ``γ`` of EM) and its functional covariance ``J Σ Jᵀ`` from the
factorisation instead of estimating them from ``S`` samples:

* primal, ``H = R Rᵀ``: ``Σ = R^{-T} R^{-1}``;
* dual, ``K = I + QᵀQ = R Rᵀ``: Woodbury gives
  ``Σ = A^{-1/2} (I + QQᵀ)^{-1} A^{-1/2} = A^{-1/2} (I − Q K^{-1} Qᵀ) A^{-1/2}``, whose diagonal
  needs ``R^{-1} Qᵀ``. A factor of ``Σ`` (for the predictive) needs ``K = V Λ Vᵀ``: with
  ``P = Q V``, ``Pᵀ P = Λ − I``, so ``(I + QQᵀ)^{-1/2} = I + P\,\mathrm{diag}(c)\,Pᵀ`` with
  ``c = −1 / (√λ (1 + √λ))``; that eigendecomposition (several times a Cholesky's cost) runs
  once, at the first prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..core.linalg import whiten


@dataclass(frozen=True)
class PrimalCovariance:
    """``Σ = R^{-T} R^{-1}`` from the lower Cholesky factor ``R`` ``[D, D]`` (float64) of ``H``."""

    factor: Tensor

    def diagonal(self) -> Tensor:
        """``diag Σ``: ``[D]`` (float64)."""
        return torch.cholesky_inverse(self.factor).diagonal()

    def functional_factor(self, jac: Tensor) -> Tensor:
        """``J R^{-T}`` ``[N, C, D]`` for ``J`` ``[N, C, D]``: its Gram is ``J Σ Jᵀ``."""
        return whiten(self.factor, jac.to(torch.float64))

    def tensors(self) -> dict[str, Tensor]:
        """What a saved file holds."""
        return {"covariance.factor": self.factor}


@dataclass(frozen=True)
class DualCovariance:
    """``Σ = A^{-1/2} (I − Q K^{-1} Qᵀ) A^{-1/2}``, ``K = I + QᵀQ = R Rᵀ`` (float64).

    Attributes:
        prior: ``[D]`` the prior precision ``A``'s diagonal.
        rows: ``Qᵀ = Lᵀ Φ A^{-1/2}`` ``[nC, D]``.
        factor: ``R`` ``[nC, nC]``, the lower Cholesky factor of ``K`` (the dual solve's).
    """

    prior: Tensor
    rows: Tensor
    factor: Tensor

    def diagonal(self) -> Tensor:
        """``diag Σ = (1 − ‖R^{-1} Qᵀ e_j‖²) / a_j``: ``[D]`` (float64; ``O(n²C² D)``)."""
        whitened = torch.linalg.solve_triangular(self.factor, self.rows, upper=False)
        return (1 - whitened.square().sum(0)) / self.prior

    @cached_property
    def _eigen(self) -> tuple[Tensor, Tensor]:
        """``(P, Λ)``: ``K = V Λ Vᵀ`` and ``P = Q V`` (computed once, when first asked for)."""
        values, vectors = torch.linalg.eigh(self.factor @ self.factor.T)
        return self.rows.T @ vectors, values

    def functional_factor(self, jac: Tensor) -> Tensor:
        """``J A^{-1/2} (I + P c Pᵀ)`` ``[N, C, D]`` for ``J`` ``[N, C, D]``: its Gram is ``J Σ Jᵀ``."""
        basis, values = self._eigen
        g = jac.to(torch.float64) / self.prior.sqrt()
        root = values.sqrt()
        return g - ((g @ basis) / (root * (1 + root))) @ basis.T

    def tensors(self) -> dict[str, Tensor]:
        """What a saved file holds."""
        return {
            "covariance.prior": self.prior,
            "covariance.rows": self.rows,
            "covariance.dual_factor": self.factor,
        }


Covariance = PrimalCovariance | DualCovariance


def restore_covariance(tensors: dict[str, Tensor], device) -> Covariance | None:
    """The covariance of a saved file's ``tensors`` (``None`` if it holds none)."""
    prefix = "covariance."
    held = {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}
    if "factor" in held:
        return PrimalCovariance(held["factor"])
    if "rows" in held:
        return DualCovariance(held["prior"], held["rows"], held["dual_factor"])
    return None
