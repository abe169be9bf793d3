"""Full-batch conjugate gradients on ``H ζ_k = A θⁿ_k``, matrix-free (one data pass per iteration)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from torch import Tensor

from ..linalg import conjugate_gradient
from ..linear_model import LinearGaussianModel
from ..noise import PosteriorNoise
from .base import SolveInfo, SolveResult


@dataclass(frozen=True)
class CG:
    """Preconditioned conjugate gradients over the full training set.

    Exact up to ``rtol`` without building ``H``, but each iteration is a pass over all data and the
    iteration count grows with ``√cond``; minibatch SGD scales better to large data sets. In the
    primal space it is preconditioned by the Jacobi diagonal ``diag(M̂) + diag(A)`` of the noise
    pass; in the dual space (``SampledLaplace(space="dual")``) by a randomised rank-
    ``preconditioner_rank`` eigendecomposition of the kernel.

    Args:
        rtol: Relative residual at which every sample stops.
        max_iter: Iteration cap.
        preconditioner_rank: Rank of the dual space's low-rank preconditioner (0: none).
    """

    rtol: float = 1e-8
    max_iter: int = 1000
    preconditioner_rank: int = 100
    name = "cg"

    def solve(
        self,
        model: LinearGaussianModel,
        noise: PosteriorNoise,
        *,
        init: Tensor | None = None,
        progress: bool | None = False,
        **_,
    ) -> SolveResult:
        """Solve for the samples, warm-started from ``init`` ``[K, D]`` if given."""
        start = time.perf_counter()
        prior = model.prior_diag()
        diagonal = noise.ggn_diag + prior
        samples, n_iter, residual = conjugate_gradient(
            model.precision_vec,
            noise.rhs(prior),
            init,
            rtol=self.rtol,
            max_iter=self.max_iter,
            preconditioner=lambda r: r / diagonal,
            progress=progress,
        )
        warn_if_unconverged(residual, self, "Raise max_iter")
        info = SolveInfo(self.name, n_iter, residual, time.perf_counter() - start)
        return SolveResult(samples, info)


def warn_if_unconverged(residual: Tensor, solver: CG, fix: str) -> None:
    """Warn when CG stopped at its cap above ``rtol``: samples and EM updates would be inexact."""
    worst = float(residual.max())
    if worst > solver.rtol:
        warnings.warn(
            f"Conjugate gradients stopped at max_iter={solver.max_iter} with relative residual "
            f"{worst:.1e} > rtol={solver.rtol:.0e}, so the solution is inexact. {fix} "
            "(lla.CG(max_iter=..., ...)).",
            stacklevel=3,
        )
