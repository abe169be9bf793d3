r"""Nyström linearised Laplace (ELLA; Deng et al., 2022): the posterior in a ``K``-dimensional basis.

The basis spans the top-``K`` eigendirections of the NTK on ``M`` training points (see
:mod:`linearised_laplace.coordinates.ntk_basis`); features ``ψ(x) = J(x) V`` come from ``K`` forward-mode JVPs.
The posterior is exact in those ``K`` dimensions: EM, the evidence and the predictive are those of
``ExactLaplace`` on ``K × K`` matrices (``posterior_precision`` is not defined outside the basis).
"""

from __future__ import annotations

from pathlib import Path

from ..coordinates.ntk_basis import Basis
from ..solvers.newton import Newton
from .exact import ExactLaplace


class NystromLaplace(ExactLaplace):
    r"""Linearised Laplace restricted to a Nyström basis of the neural tangent kernel (ELLA).

    Args:
        model, likelihood, mean_solver, **kwargs: As for :class:`~linearised_laplace.ExactLaplace`
            (with a single ``prior_precision``: the prior is isotropic in the basis).
        n_points: ``M``, training points on which the NTK is eigendecomposed (default
            ``min(1000, N)``).
        rank: ``K``, basis size (default ``min(20, M·C)``); directions with a vanishing NTK
            eigenvalue are dropped.

    Attributes:
        basis: ``[K, D]`` orthonormal parameter-space directions ``V`` (after the first fit), with
            their NTK ``eigenvalues`` ``[K]``; ``inducing_points``: ``[M]`` the points used.
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
        basis = Basis(n_points, rank)
        kwargs["coordinates"] = {"basis": basis}
        super().__init__(model, likelihood, mean_solver=mean_solver, **kwargs)
        basis.check_budget(self.n_params)

    basis = property(lambda self: self.coordinates.basis)
    eigenvalues = property(lambda self: self.coordinates.eigenvalues)
    inducing_points = property(lambda self: self.coordinates.inducing_points)

    @classmethod
    def settings_from(cls, meta: dict, path: str | Path) -> dict:  # noqa: D102
        return Basis.settings_from(meta, path)
