r"""Exact dense inference in weight space: the oracle, and the engine of ``ExactLaplace``.

``H = M + A`` is assembled densely in float64 from the Jacobian, factorised ``H = R Rᵀ`` by Cholesky,
and each sample solves ``H ζ_k = A θⁿ_k`` exactly. Cost ``O(n C D² + D³)`` time and ``O(D²)`` memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import Tensor

from ..core.linalg import cholesky, cholesky_solve
from ..model.linear_model import LinearGaussianModel
from ..model.noise import PosteriorNoise
from .base import SolveInfo, SolveResult, relative_residual
from .covariance import PrimalCovariance


def posterior_precision(model: LinearGaussianModel) -> Tensor:
    """Dense ``H = Φᵀ B Φ + A``: float64 ``[D, D]``."""
    return model.precision.dense(model.dense_ggn())


@dataclass(frozen=True)
class Cholesky:
    """Exact solve through a dense Cholesky factor of ``H`` (small ``D`` only)."""

    name = "cholesky"
    advice = ""

    def solve(self, model: LinearGaussianModel, noise: PosteriorNoise, **_) -> SolveResult:
        """Exact samples ``ζ_k = H^{-1}(A θ_0 + u_k)`` (extra keywords are ignored)."""
        start = time.perf_counter()
        factor = cholesky(posterior_precision(model))
        rhs = noise.rhs(model.precision.prior64)
        samples = cholesky_solve(factor, rhs)
        residual = relative_residual(
            model, samples.to(noise.u.dtype), noise.rhs(model.precision.prior)
        )
        info = SolveInfo(self.name, 0, residual, time.perf_counter() - start)
        return SolveResult(samples.to(noise.u.dtype), info, covariance=PrimalCovariance(factor))


def exact_samples(
    model: LinearGaussianModel, ggn: Tensor, noise: PosteriorNoise
) -> tuple[Tensor, Tensor]:
    """The factor ``R`` of ``H = M + A`` (``M`` = ``ggn``, float64) and the exact samples of ``noise``.

    The samples solve ``H ζ = A θ_0 + Φᵀ L ν``: those of any other solver given the same noise.
    The noise holds for every prior of ``model``'s data and noise level, so one draw serves a grid.
    """
    factor = cholesky(model.precision.dense(ggn))
    return factor, cholesky_solve(factor, noise.rhs(model.precision.prior64)).to(
        model.features.dtype
    )
