r"""The posterior precision ``H = A + M`` of the linear model, as an operator.

Built once per value of the hyperparameters
(:attr:`~linearised_laplace.LinearGaussianModel.precision`), it is where the solvers, the mean and the preconditioners read
the prior ``A``: none of them reads the prior itself. A preconditioner ``P ≈ H`` plugs in through
:meth:`PosteriorPrecision.preconditioner`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..core.kronecker import KroneckerGGN, KroneckerPreconditioner
from ..core.linalg import add_diagonal
from ..core.lowrank import LowRank, Preconditioner, nystrom
from ..core.seeds import seeded_generator
from .priors import Prior


@dataclass(frozen=True)
class PosteriorPrecision:
    r"""``H = A + M`` with a diagonal prior precision ``A`` and a matrix-free GGN ``M``.

    Attributes:
        prior_spec: The prior (its precision values and groups).
        ggn: ``Z [K, D] ↦ M Z`` row-wise (one data pass).
        dtype, device: Those of the features (and of :attr:`prior`).
        kronecker: A KFAC approximation of ``M``: if given, the preconditioner uses it.
    """

    prior_spec: Prior
    ggn: Callable[[Tensor], Tensor]
    dtype: torch.dtype
    device: torch.device
    kronecker: KroneckerGGN | None = None

    @cached_property
    def prior(self) -> Tensor:
        """``diag(A)`` ``[D]`` in the features' dtype."""
        return self.prior_spec.diag(self.dtype, self.device)

    @cached_property
    def prior64(self) -> Tensor:
        """``diag(A)`` ``[D]`` in float64 (for dense factorisations)."""
        return self.prior_spec.diag(torch.float64, self.device)

    @property
    def n_params(self) -> int:
        """``D``."""
        return self.prior.numel()

    def matvec(self, z: Tensor) -> Tensor:
        """``H z_k = A z_k + M z_k``: ``[K, D]`` (one data pass)."""
        return self.prior * z + self.ggn(z)

    def dense(self, ggn: Tensor) -> Tensor:
        """``H = A + M`` ``[D, D]`` (float64) from the dense GGN ``M``."""
        return add_diagonal(ggn, self.prior64.to(ggn.device))

    def preconditioner(
        self, ggn_diag: Tensor, ggn_low_rank: LowRank | None = None
    ) -> Preconditioner | KroneckerPreconditioner:
        """``P ≈ H`` from what approximates ``M``.

        KFAC (:attr:`kronecker`, with Jacobi ``A + diag(M̂)`` on the tensors it does not cover);
        else ``P = A + M_r`` with the Nyström sketch ``M_r``; else Jacobi ``P = A + diag(M̂)``.
        """
        if self.kronecker is not None:
            return KroneckerPreconditioner(self.kronecker, self.prior, ggn_diag)
        if ggn_low_rank is None or ggn_low_rank.rank == 0:
            return Preconditioner.diagonal(self.prior + ggn_diag)
        return Preconditioner.diagonal_plus_low_rank(self.prior, ggn_low_rank)

    def sketch(
        self,
        rank: int,
        seed: int = 0,
        max_rank: int | None = None,
        grow: Callable[[int, float], bool] | None = None,
    ) -> LowRank:
        """Rank-``r`` Nyström approximation ``M_r ⪯ M`` (one data pass, ``r + 10`` tangents).

        The sketch is taken in prior-whitened coordinates, ``A^{-1/2} M A^{-1/2}``, so that it ranks
        directions by their curvature against the prior; for an isotropic prior it does not depend
        on ``α``, and it is reused across EM steps. With ``max_rank`` it doubles its rank while
        ``grow(r, λ_r)`` (:func:`~linearised_laplace.core.lowrank.nystrom`; a data pass per
        doubling).
        """
        prior_sqrt = self.prior.sqrt()

        def matvec(z: Tensor) -> Tensor:
            return self.ggn(z / prior_sqrt) / prior_sqrt

        generator = seeded_generator(seed, "ggn-nystrom")
        sketch = nystrom(
            matvec,
            self.n_params,
            rank,
            generator=generator,
            dtype=self.dtype,
            device=self.device,
            max_rank=max_rank,
            grow=grow,
        )
        return LowRank(prior_sqrt[:, None] * sketch.vectors, sketch.values)
