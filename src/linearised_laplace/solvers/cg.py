"""Full-batch conjugate gradients on ``H ζ_k = A θⁿ_k``, matrix-free (one data pass per iteration)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import Tensor

from ..linalg import conjugate_gradient
from ..linear_model import LinearGaussianModel
from ..noise import PosteriorNoise
from .base import SolveInfo, SolveResult


@dataclass(frozen=True)
class CG:
    """Conjugate gradients over the full training set.

    Exact up to ``rtol`` without building ``H``, but each iteration is a pass over all data and the
    iteration count grows with ``√cond(H)``; minibatch SGD scales better to large data sets.

    Args:
        rtol: Relative residual at which every sample stops.
        max_iter: Iteration cap.
    """

    rtol: float = 1e-8
    max_iter: int = 1000
    name = "cg"

    def solve(
        self, model: LinearGaussianModel, noise: PosteriorNoise, *, init: Tensor | None = None, **_
    ) -> SolveResult:
        """Solve for the samples, warm-started from ``init`` ``[K, D]`` if given."""
        start = time.perf_counter()
        rhs = noise.rhs(model.prior_diag())
        samples, n_iter, residual = conjugate_gradient(
            model.precision_vec, rhs, init, rtol=self.rtol, max_iter=self.max_iter
        )
        info = SolveInfo(self.name, n_iter, residual, time.perf_counter() - start)
        return SolveResult(samples, info)
