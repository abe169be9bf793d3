r"""Nyström linearised Laplace (ELLA; Deng et al., 2022): the posterior in a ``K``-dimensional basis.

The basis spans the top-``K`` eigendirections of the NTK on ``M`` training points (see
:mod:`linearised_laplace.ntk_basis`); features ``ψ(x) = J(x) V`` come from ``K`` forward-mode JVPs.
The posterior is exact in those ``K`` dimensions, so EM, the evidence and the predictive are those of
``ExactLaplace`` on ``K × K`` matrices.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .. import persistence
from .._checks import check_positive_int, check_sample_budget
from ..features import FeatureOperator
from ..linear_model import LinearGaussianModel
from ..ntk_basis import ProjectedFeatures, nystrom_basis
from ..priors import make_prior
from ..solvers.newton import Newton
from .base import BaseLaplace
from .exact import ExactLaplace

DEFAULT_POINTS, DEFAULT_RANK = 1000, 20


class NystromLaplace(ExactLaplace):
    r"""Linearised Laplace restricted to a Nyström basis of the neural tangent kernel (ELLA).

    Args:
        model: Trained network.
        likelihood: ``"classification"`` or ``"regression"``.
        n_points: ``M``, training points on which the NTK is eigendecomposed (default
            ``min(1000, N)``).
        rank: ``K``, basis size (default ``min(20, M·C)``); directions with a vanishing NTK
            eigenvalue are dropped.
        mean_solver: For the linear model's mean in EM (:class:`~linearised_laplace.solvers.newton.Newton`).
        **kwargs: The shared keywords of :class:`~linearised_laplace.methods.base.BaseLaplace`
            (with a single ``prior_precision``: the prior is isotropic in the basis).

    Attributes:
        basis: ``[K, D]`` orthonormal parameter-space directions ``V`` (after the first fit).
        inducing_points: ``[M]`` indices of the training points used.
    """

    def __init__(
        self,
        model,
        likelihood="classification",
        *,
        n_points: int | None = None,
        rank: int | None = None,
        mean_solver: Newton | None = None,
        **kwargs,
    ):
        BaseLaplace.__init__(self, model, likelihood, **kwargs)
        if not self.prior.is_isotropic:
            raise ValueError(
                "NystromLaplace takes a single `prior_precision` (isotropic in the basis)."
            )
        self.n_points = None if n_points is None else check_positive_int("n_points", n_points)
        self.rank = None if rank is None else check_positive_int("rank", rank)
        if self.rank is not None and self.n_points is not None:
            self._check_rank(self.rank, self.n_points, None)
        self._init_exact(self.rank or DEFAULT_RANK, mean_solver)
        check_sample_budget(
            (self.rank or DEFAULT_RANK) * self.n_params // 2,
            f"A Nyström basis of rank {self.rank or DEFAULT_RANK} over {self.n_params} parameters",
            "Lower `rank`.",
        )
        self.basis: Tensor | None = None
        self.inducing_points: Tensor | None = None

    @staticmethod
    def _check_rank(rank: int, n_points: int, n_outputs: int | None) -> None:
        if n_outputs is not None and rank > n_points * n_outputs:
            raise ValueError(
                f"`rank` = {rank} exceeds n_points·C = {n_points}·{n_outputs} = "
                f"{n_points * n_outputs}, the size of the NTK Gram matrix. Lower `rank` or raise "
                "`n_points`."
            )

    def _forget_fit(self) -> None:
        super()._forget_fit()
        self.basis = None

    def _fit_basis(self, model: LinearGaussianModel) -> None:
        if self.basis is not None:
            return
        n = len(model.data)
        if self.n_points is not None and self.n_points > n:
            raise ValueError(
                f"`n_points` = {self.n_points} exceeds the {n} training points; lower it."
            )
        n_points = self.n_points or min(DEFAULT_POINTS, n)
        rank = self.rank or min(DEFAULT_RANK, n_points * model.n_outputs)
        self._check_rank(rank, n_points, model.n_outputs)
        self.basis, self.eigenvalues, self.inducing_points = nystrom_basis(
            model.features, model.data, n_points, rank, seed=self.seed
        )
        groups = torch.zeros(self.basis.shape[0], dtype=torch.long)
        self.prior = make_prior(self.prior.precision, groups, ("nystrom basis",))

    def _transform(self, features: FeatureOperator) -> FeatureOperator:
        return features if self.basis is None else ProjectedFeatures(features, self.basis)

    def _to_parameters(self, z: Tensor) -> Tensor:
        return super()._to_parameters(z @ self.basis.to(z.dtype))

    def _anchor(self) -> Tensor:
        anchor = super()._anchor()
        return anchor if self.basis is None else self.basis.to(anchor.dtype) @ anchor

    @property
    def posterior_precision(self) -> Tensor:
        """Not defined: the posterior is degenerate outside the ``K``-dimensional basis."""
        raise AttributeError(
            "NystromLaplace's posterior is degenerate outside its basis; use `feature_covariance` "
            "(K×K, in the basis `basis`) or `posterior_covariance` (rank K)."
        )

    @property
    def posterior_covariance(self) -> Tensor:
        """``Vᵀ H_K^{-1} V`` in the original coordinates (rank ``K``): float64 ``[D, D]``."""
        d = self.n_params
        check_sample_budget(
            d * d, f"A dense {d}×{d} covariance", "Use `feature_covariance` and `basis`."
        )
        basis = self.basis.double()
        if self.scale is not None:
            basis = basis * self.scale.double()
        return basis.T @ self.feature_covariance @ basis

    def _state_tensors(self) -> dict[str, Tensor]:
        return {
            **super()._state_tensors(),
            "basis": self.basis,
            "inducing_points": self.inducing_points,
        }

    def _restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        super()._restore(tensors, meta)
        self.basis, self.inducing_points = tensors["basis"], tensors["inducing_points"]
        self.prior = make_prior(
            self.prior.precision,
            torch.zeros(self.basis.shape[0], dtype=torch.long),
            ("nystrom basis",),
        )

    def _settings(self) -> dict:
        return {"n_points": self.n_points, "rank": self.rank}

    @classmethod
    def _settings_from(cls, meta: dict, path: str | Path) -> dict:
        optional_int = (int, type(None))
        persistence.check_fields(meta, {"n_points": optional_int, "rank": optional_int}, path)
        return {"n_points": meta["n_points"], "rank": meta["rank"]}
