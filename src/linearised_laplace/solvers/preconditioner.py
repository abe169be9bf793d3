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

from ..core.checks import as_int
from ..model.linear_model import LinearGaussianModel
from ..model.noise import PosteriorNoise

SKETCH_BYTES = 2 * 2**30
"""Memory for a sketch's ``[D, r + 10]`` float64 matrices (four of them); a larger ``D`` gets a
lower rank, down to none (Jacobi)."""

AUTO_RANKS = (100, 1600)
"""``preconditioner_rank="auto"``: the first sketch's rank, and the most it grows to."""

RANK_SCALE = 100
"""An ``"auto"`` sketch of rank ``r`` doubles while ``1 + λ_r > (r / RANK_SCALE)²``.

``1 + λ_r`` (``λ_r`` its smallest eigenvalue against the prior) bounds the preconditioned
condition number, and CG's iterations grow with its square root, while a doubling costs ``r``
more GGN-vector products. So a doubling pays while the iterations, times the samples solved in a
fit, exceed a multiple of ``r``: on the Table 1 CNNs (``D = 20,490``; about 64 sample solves in EM
and the final draw) while ``sqrt(1 + λ_r)`` exceeds about ``r / 100``
(``benchmarks/results/preconditioner_rank-*.md``)."""


def worth_growing(rank: int, smallest: float) -> bool:
    """Whether an ``"auto"`` sketch of ``rank`` with smallest eigenvalue ``smallest`` doubles."""
    return 1.0 + smallest > (rank / RANK_SCALE) ** 2


def check_rank(solver: str, rank: object) -> int | str:
    """``rank`` as a plain int (a numpy or torch integer too) or ``"auto"``; else refused."""
    if isinstance(rank, str) and rank == "auto":
        return rank
    number = as_int(rank)
    if number is None or number < 0:
        raise ValueError(
            f'{solver} `preconditioner_rank` must be "auto" or an integer >= 0, got {rank!r}.'
        )
    return number


def sketch_ranks(rank: int | str, n: int, width: int | None = None) -> tuple[int, int]:
    """The first and the largest rank of a sketch of an ``n``-dim operator.

    ``rank``: an integer (fixed) or ``"auto"`` (:data:`AUTO_RANKS`). Both are capped at ``n`` and,
    for ``width`` (``D``) given, so that the sketch fits in :data:`SKETCH_BYTES`.
    """
    first, most = AUTO_RANKS if rank == "auto" else (rank, rank)
    cap = n if width is None else min(n, SKETCH_BYTES // (4 * 8 * width) - 10)
    most = max(0, min(most, cap))
    return min(first, most), most


def with_ggn_sketch(
    model: LinearGaussianModel, noise: PosteriorNoise, rank: int | str, seed: int = 0
) -> PosteriorNoise:
    """``noise`` carrying a GGN sketch (computed unless it has one of at least the first rank).

    ``rank``: see :func:`sketch_ranks`; an ``"auto"`` sketch grows while :func:`worth_growing`.
    """
    first, most = sketch_ranks(rank, model.n_params, model.n_params)
    if first == 0 or (noise.ggn_low_rank is not None and noise.ggn_low_rank.rank >= first):
        return noise
    sketch = model.precision.sketch(first, seed, max_rank=most, grow=worth_growing)
    return replace(noise, ggn_low_rank=sketch)
