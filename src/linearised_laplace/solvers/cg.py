"""Full-batch preconditioned conjugate gradients on ``H ζ_k = A θⁿ_k``, matrix-free."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.linalg import block_conjugate_gradient, conjugate_gradient
from ..model.linear_model import LinearGaussianModel
from ..model.noise import PosteriorNoise
from .base import SolveInfo, SolveResult, check_preconditioner, check_settings
from .preconditioner import check_rank, with_ggn_sketch


@dataclass(frozen=True)
class CG:
    """Preconditioned conjugate gradients over the full training set.

    Exact up to ``rtol`` without building ``H``; each iteration is one pass over all data (a JVP and
    a VJP per sample), and the iteration count grows with the square root of the preconditioned
    condition number. In the primal space the preconditioner is ``P = A + M_r`` with a
    rank-``preconditioner_rank`` Nyström approximation ``M_r`` of the GGN (one extra data pass;
    :mod:`~linearised_laplace.solvers.preconditioner`); in the dual space
    (``SampledLaplace(space="dual")``) it is ``I + U Λ Uᵀ`` from a Nyström approximation of the
    kernel.

    Args:
        rtol: Relative residual at which every sample stops; a sample above it at ``max_iter``
            raises a :class:`~linearised_laplace.ConvergenceWarning`. ``None`` (default): ``1e-4``
            for float32 features, ``1e-8`` for float64: float32 sums over thousands of points
            stall a little below ``1e-4``. What that residual means for the samples' error is
            measured in ``benchmarks/results/solver_fidelity.md``.
        max_iter: Iteration cap.
        preconditioner: In the primal space, ``"nystrom"`` (default) or ``"kfac"``: ``P`` from the
            GGN's KFAC blocks (:mod:`~linearised_laplace.core.kronecker`, built once per fit by
            curvlinops, ``pip install linearised-laplace[kfac]``), Jacobi on the tensors KFAC
            does not cover.
        preconditioner_rank: Rank of the low-rank part of the preconditioner (0: Jacobi in the
            primal space, none in the dual). ``"auto"`` (default): 100, doubled (one data pass
            each) while ``1 + λ_r`` (``λ_r`` the sketch's smallest eigenvalue against the prior)
            exceeds ``(r / 100)²``, up to 1,600 and the sketch's memory cap
            (:func:`~linearised_laplace.solvers.preconditioner.sketch_ranks`): a GGN whose
            spectrum decays slowly gets the rank its solves need (measured in
            ``benchmarks/results/preconditioner_rank-*.md``).
        block: Solve the ``K`` samples together by block CG (default;
            :func:`~linearised_laplace.core.linalg.block_conjugate_gradient`): an iteration still
            costs one data pass for ``K`` vectors, but every sample searches the span of all
            samples' directions, so it needs fewer iterations (measured against one CG per
            sample in ``benchmarks/results/block_cg*.md``). ``False``: one CG per sample.
    """

    rtol: float | None = None
    max_iter: int = 1000
    preconditioner: str = "nystrom"
    preconditioner_rank: int | str = "auto"
    block: bool = True
    name = "cg"
    advice = "Raise lla.CG(max_iter=...) or its preconditioner_rank."

    def __post_init__(self):
        check_preconditioner("CG", self.preconditioner)
        object.__setattr__(self, "preconditioner_rank", check_rank("CG", self.preconditioner_rank))
        if not isinstance(self.block, bool):
            raise ValueError(f"CG `block` must be True or False, got {self.block!r}.")
        check_settings(
            "CG",
            self,
            positive_ints=("max_iter",),
            positive=("rtol",),
        )

    @property
    def uses_kronecker(self) -> bool:
        """Whether it preconditions with KFAC (which the fit then builds)."""
        return self.preconditioner == "kfac"

    def sketch_rank(self, model: LinearGaussianModel) -> int | str:
        """The rank of the GGN sketch this solver preconditions ``model`` with."""
        return 0 if self.preconditioner == "kfac" else self.preconditioner_rank

    def tolerance(self, dtype: torch.dtype) -> float:
        """``rtol``, or its default for ``dtype``."""
        if self.rtol is not None:
            return self.rtol
        return 1e-8 if dtype == torch.float64 else 1e-4

    def solve(
        self,
        model: LinearGaussianModel,
        noise: PosteriorNoise,
        *,
        init: Tensor | None = None,
        seed: int = 0,
        progress: bool | None = False,
        **_,
    ) -> SolveResult:
        """Solve for the samples, warm-started from ``init`` ``[K, D]`` if given."""
        start = time.perf_counter()
        prior = model.precision.prior
        noise = with_ggn_sketch(model, noise, self.sketch_rank(model), seed)
        preconditioner = model.precision.preconditioner(noise.ggn_diag, noise.ggn_low_rank)
        solve = block_conjugate_gradient if self.block else conjugate_gradient
        samples, n_iter, residual = solve(
            model.precision.matvec,
            noise.rhs(prior),
            init,
            rtol=self.tolerance(prior.dtype),
            max_iter=self.max_iter,
            preconditioner=preconditioner.solve,
            progress=progress,
        )
        info = SolveInfo(
            self.name,
            n_iter,
            residual,
            time.perf_counter() - start,
            tolerance=self.tolerance(prior.dtype),
            preconditioner_rank=None if noise.ggn_low_rank is None else noise.ggn_low_rank.rank,
        )
        return SolveResult(samples, info)
