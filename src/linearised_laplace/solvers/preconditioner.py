r"""Preconditioners of the posterior precision ``H = A + M`` for the iterative solvers.

The preconditioner is ``P = A + M_r`` with a randomised Nyström approximation ``M_r ⪯ M`` of the
GGN (Frangella, Tropp & Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl.,
2023), built by :meth:`~linearised_laplace.model.precision.PosteriorPrecision.sketch` and applied
by :meth:`~linearised_laplace.model.precision.PosteriorPrecision.preconditioner`. The spectrum of
``P^{-1} H`` then lies in ``[1, 1 + λ_{r+1}(A^{-1/2} M A^{-1/2})]`` up to the sketch's error:
clustered near 1 once ``r`` exceeds the number of eigenvalues of ``M`` that are large against
``A``. Without a sketch the preconditioner is Jacobi's, ``A + diag(M̂)`` from a Hutchinson
estimate. That diagonal's remainder is not added to ``A + M_r``: the estimate's per-entry noise
would swamp ``A`` in the directions that ``M_r`` already captures.
"""

from __future__ import annotations

from dataclasses import replace

from ..model.linear_model import LinearGaussianModel
from ..model.noise import PosteriorNoise

SKETCH_BYTES = 2 * 2**30
"""Memory for a sketch's ``[D, r + 10]`` float64 matrices (four of them); a larger ``D`` gets a
lower rank, down to none (Jacobi)."""


def with_ggn_sketch(
    model: LinearGaussianModel, noise: PosteriorNoise, rank: int, seed: int = 0
) -> PosteriorNoise:
    """``noise`` carrying a GGN sketch of rank ``min(rank, D)`` (computed unless it has one).

    The rank is capped so that the sketch fits in :data:`SKETCH_BYTES`.
    """
    affordable = SKETCH_BYTES // (4 * 8 * model.n_params) - 10
    rank = max(0, min(rank, model.n_params, affordable))
    if rank == 0 or (noise.ggn_low_rank is not None and noise.ggn_low_rank.rank >= rank):
        return noise
    return replace(noise, ggn_low_rank=model.precision.sketch(rank, seed))
