r"""Exact dense inference in weight space: the oracle, and the engine of ``ExactLaplace``.

``H = M + A`` is assembled densely in float64 from the Jacobian, factorised ``H = R Rᵀ`` by Cholesky,
and each sample solves ``H ζ_k = A θⁿ_k`` exactly. Cost ``O(n C D² + D³)`` time and ``O(D²)`` memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..linalg import add_diagonal, cholesky, cholesky_solve, whiten  # noqa: F401 (re-exported)
from ..linear_model import LinearGaussianModel
from ..noise import NoiseSource, PosteriorNoise, draw_posterior_noise
from .base import SolveInfo, SolveResult, relative_residual


def posterior_precision(model: LinearGaussianModel) -> Tensor:
    """Dense ``H = Φᵀ B Φ + A``: float64 ``[D, D]``."""
    ggn = model.dense_ggn()
    return add_diagonal(ggn, model.prior.diag(torch.float64, ggn.device))


@dataclass(frozen=True)
class Cholesky:
    """Exact solve through a dense Cholesky factor of ``H`` (small ``D`` only)."""

    name = "cholesky"
    advice = ""

    def solve(self, model: LinearGaussianModel, noise: PosteriorNoise, **_) -> SolveResult:
        """Exact samples ``ζ_k = H^{-1}(A θ_0 + u_k)`` (extra keywords are ignored)."""
        start = time.perf_counter()
        factor = cholesky(posterior_precision(model))
        rhs = noise.rhs(model.prior.diag(torch.float64, factor.device))
        samples = cholesky_solve(factor, rhs)
        residual = relative_residual(
            model, samples.to(noise.u.dtype), noise.rhs(model.prior_diag())
        )
        info = SolveInfo(self.name, 0, residual, time.perf_counter() - start)
        return SolveResult(samples.to(noise.u.dtype), info)


def exact_samples(
    model: LinearGaussianModel, ggn: Tensor, n_samples: int, seed: int, progress: bool | None = None
) -> tuple[Tensor, Tensor]:
    """The factor ``R`` of ``H = M + A`` (``M`` = ``ggn``, float64) and ``n_samples`` exact samples.

    The samples solve ``H ζ = A θ_0 + Φᵀ L ν`` for the shared noise of ``seed``, so they equal
    those of any other solver with that seed.
    """
    noise = draw_posterior_noise(model, n_samples, NoiseSource(seed), progress)
    prior = model.prior.diag(torch.float64, ggn.device)
    factor = cholesky(add_diagonal(ggn, prior))
    return factor, cholesky_solve(factor, noise.rhs(prior)).to(model.features.dtype)
