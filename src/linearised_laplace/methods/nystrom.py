r"""Nyström linearised Laplace (ELLA; Deng et al., 2022): the posterior in a ``K``-dimensional basis.

The basis spans the top-``K`` eigendirections of the NTK on ``M`` training points (see
:mod:`linearised_laplace.ntk_basis`); features ``ψ(x) = J(x) V`` come from ``K`` forward-mode JVPs.
The posterior is exact in those ``K`` dimensions, so EM, the evidence and the predictive are those of
``ExactLaplace`` on ``K × K`` matrices (``posterior_precision`` is not defined outside the basis).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .. import persistence
from .._checks import check_positive_int, check_sample_budget
from ..coordinates import Basis
from ..solvers.newton import Newton
from .exact import ExactLaplace


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
        **kwargs: The shared keywords of :class:`~linearised_laplace.methods.base.Laplace`
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
        n_points = None if n_points is None else check_positive_int("n_points", n_points)
        rank = None if rank is None else check_positive_int("rank", rank)
        basis = Basis(n_points, rank)
        super().__init__(model, likelihood, mean_solver=mean_solver, basis=basis, **kwargs)
        if not self.prior.is_isotropic:
            raise ValueError(
                "NystromLaplace takes a single `prior_precision` (isotropic in the basis)."
            )
        k = self.coordinates.dim
        check_sample_budget(
            k * self.n_params // 2,
            f"A Nyström basis of rank {k} over {self.n_params} parameters",
            "Lower `rank`.",
        )

    @property
    def basis(self) -> Tensor | None:
        """``[K, D]`` the basis ``V`` (after the first fit)."""
        return self.coordinates.basis

    @property
    def eigenvalues(self) -> Tensor | None:
        """``[K]`` the NTK eigenvalues of the basis directions."""
        return self.coordinates.eigenvalues

    @property
    def inducing_points(self) -> Tensor | None:
        """``[M]`` the training points the basis was computed on."""
        return self.coordinates.inducing_points

    def settings(self) -> dict:  # noqa: D102
        spec = self.coordinates.basis_spec
        return {"n_points": spec.n_points, "rank": spec.rank}

    @classmethod
    def settings_from(cls, meta: dict, path: str | Path) -> dict:  # noqa: D102
        optional_int = (int, type(None))
        persistence.check_fields(meta, {"n_points": optional_int, "rank": optional_int}, path)
        return {"n_points": meta["n_points"], "rank": meta["rank"]}
