r"""The coordinates a posterior lives in: which weights, how scaled, in what basis, seen how.

A posterior over ``z`` stands for weights ``θ = θ* + P z`` with ``P = diag(s) Vᵀ``: ``s`` the g-prior
scale (:mod:`~linearised_laplace.g_prior`; 1 without it), ``V`` a Nyström basis
(:mod:`~linearised_laplace.ntk_basis`; the identity without one), over the linearised weights (all,
a subnetwork, the last layer, patterns). The likelihood sees the network's outputs through an
optional linear output map (a tomography operator). What the data determine (a ranked subnetwork,
``s``, ``V``) is fitted once, in that order, by :meth:`Coordinates.fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_sample_budget
from .data import Data
from .features import FeatureOperator, OutputMap
from .g_prior import ScaledFeatures, g_prior_scale, ggn_diagonal
from .likelihoods import Likelihood
from .linear_model import LinearGaussianModel
from .linearisation import Linearisation
from .noise import NoiseSource
from .ntk_basis import DEFAULT_RANK, ProjectedFeatures, basis_size, nystrom_basis
from .priors import Prior
from .ranking import rank_weights, select_top


@dataclass(frozen=True)
class Ranking:
    """A subnetwork of ``size`` weights to rank by ``strategy`` (:mod:`~linearised_laplace.ranking`)."""

    strategy: str
    size: int
    swag_epochs: int = 10
    exclude_norm: bool = False


@dataclass(frozen=True)
class Basis:
    """A Nyström basis of ``rank`` directions on ``n_points`` points (``None``: the defaults)."""

    n_points: int | None = None
    rank: int | None = None


class Coordinates:
    """The map between a posterior's coordinates ``z`` and the network's weights.

    Args:
        linearisation: The network linearised over the chosen weights (all, for a ranking).
        g_prior: Scale the features to unit GGN diagonal.
        g_prior_probes: Probes of the sampled GGN diagonal (where it is not exact).
        ranking: A subnetwork to choose from the data (replaces the linearisation at ``fit``).
        basis: A Nyström basis to fit.
        output_map: ``(forward, adjoint)``, a linear map the likelihood sees the outputs through.

    Attributes:
        scale: ``[D]`` g-prior scale ``s`` (after ``fit``), or ``None``.
        basis: ``[K, D]`` orthonormal directions ``V`` (after ``fit``), or ``None``.
        eigenvalues: ``[K]`` their NTK eigenvalues; ``inducing_points``: ``[M]`` the points used.
    """

    def __init__(
        self,
        linearisation: Linearisation,
        *,
        g_prior: bool = False,
        g_prior_probes: int = 8,
        ranking: Ranking | None = None,
        basis: Basis | None = None,
        output_map: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None = None,
    ):
        self.linearisation, self.ranking, self.output_map = linearisation, ranking, output_map
        self.g_prior, self.g_prior_probes, self.basis_spec = g_prior, g_prior_probes, basis
        self.scale: Tensor | None = None
        self.basis = self.eigenvalues = self.inducing_points = None

    @property
    def dim(self) -> int:
        """The posterior's dimension (for a basis not yet fitted: its requested rank)."""
        if self.basis_spec is not None:
            return (
                len(self.basis) if self.basis is not None else self.basis_spec.rank or DEFAULT_RANK
            )
        return self.ranking.size if self.ranking is not None else self.linearisation.n_params

    def groups(self) -> tuple[Tensor, tuple[str, ...]]:
        """The prior's group of each coordinate, and the group names."""
        if self.basis is not None:
            return torch.zeros(len(self.basis), dtype=torch.long), ("nystrom basis",)
        selection = self.linearisation.selection
        return selection.group_ids, selection.names

    def fit(
        self, data: Data, likelihood: Likelihood, prior: Prior, seed: int, progress: bool | None
    ) -> None:
        """Fit what is not fitted yet: the ranked subnetwork, then the scale, then the basis."""
        lin = self.linearisation
        if self.ranking is not None:
            model = LinearGaussianModel(lin, likelihood, prior, data)
            source = NoiseSource(seed, stream="subnetwork")
            diagonal = ggn_diagonal(model, source, progress=progress)
            r = self.ranking
            scores = rank_weights(
                r.strategy, model, diagonal, seed=seed, swag_epochs=r.swag_epochs, progress=progress
            )
            self.linearisation = Linearisation(
                lin.model,
                select_top(scores, diagonal, r.size),
                exclude_norm=r.exclude_norm,
                tangent_batching=lin.tangent_batching,
            )
            self.ranking = None
        if self.g_prior and self.scale is None:
            model = LinearGaussianModel(self.observed(), likelihood, prior, data)
            source = NoiseSource(seed, stream="g-prior")
            diagonal = ggn_diagonal(model, source, self.g_prior_probes, progress=progress)
            self.scale = g_prior_scale(diagonal).to(self.linearisation.dtype)
        if self.basis_spec is not None and self.basis is None:
            model = LinearGaussianModel(self.features(), likelihood, prior, data)
            spec = self.basis_spec
            n_points, rank = basis_size(spec.n_points, spec.rank, len(data), model.n_outputs)
            self.basis, self.eigenvalues, self.inducing_points = nystrom_basis(
                model.features, data, n_points, rank, seed=seed
            )

    def forget(self) -> None:
        """Drop what was fitted at former weights (a chosen subnetwork stays)."""
        self.scale = self.basis = self.eigenvalues = self.inducing_points = None

    def observed(self) -> FeatureOperator:
        """The network's features as the likelihood sees them (through the output map)."""
        if self.output_map is None:
            return self.linearisation
        return OutputMap(self.linearisation, *self.output_map)

    def transform(self, features: FeatureOperator) -> FeatureOperator:
        """Features of the linearised weights in these coordinates: ``Φ P``."""
        if self.scale is not None:
            features = ScaledFeatures(features, self.scale)
        return features if self.basis is None else ProjectedFeatures(features, self.basis)

    def features(self) -> FeatureOperator:
        """The likelihood's features in these coordinates (those of the linear model)."""
        return self.transform(self.observed())

    def to_parameters(self, z: Tensor) -> Tensor:
        """``[S, P]`` coordinates to ``[S, D]`` weight deviations ``P z``."""
        if self.basis is not None:
            z = z @ self.basis.to(z.dtype)
        return z if self.scale is None else z * self.scale

    def covariance_to_parameters(self, covariance: Tensor) -> Tensor:
        """``P Σ Pᵀ``: ``[P, P]`` to ``[D, D]`` (float64; of rank ``K`` with a basis)."""
        if self.basis is None:
            s = self._scale64()
            return covariance if s is None else s[:, None] * covariance * s[None, :]
        d = self.linearisation.n_params
        check_sample_budget(
            d * d, f"A dense {d}×{d} covariance", "Use `feature_covariance` and `basis`."
        )
        p = self.basis.double() if self.scale is None else self.basis.double() * self._scale64()
        return p.T @ covariance @ p

    def precision_to_parameters(self, precision: Tensor) -> Tensor:
        """``P^{-T} H P^{-1}`` for an invertible ``P`` (no basis): ``[D, D]`` float64."""
        if self.basis is not None:
            raise ValueError(
                "The posterior is degenerate outside the Nyström basis; use `feature_covariance` "
                "(K×K, in the basis `basis`) or `posterior_covariance` (rank K)."
            )
        s = self._scale64()
        return precision if s is None else (1 / s)[:, None] * precision * (1 / s)[None, :]

    def anchor(self) -> Tensor:
        """The network's weights ``θ*`` in these coordinates: ``P⁺ θ*``."""
        theta = self.linearisation.theta_star
        theta = theta if self.scale is None else theta / self.scale
        return theta if self.basis is None else self.basis.to(theta.dtype) @ theta

    def _scale64(self) -> Tensor | None:
        return None if self.scale is None else self.scale.double()

    def tensors(self) -> dict[str, Tensor]:
        """What a saved posterior needs to rebuild these coordinates."""
        selection = self.linearisation.selection
        tensors = {} if selection.indices is None else {"selection_indices": selection.indices}
        if self.scale is not None:
            tensors["scale"] = self.scale
        if self.basis_spec is not None:
            tensors.update(basis=self.basis, inducing_points=self.inducing_points)
        return tensors

    def restore(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`tensors` saved (the selection is restored at construction)."""
        self.scale = tensors.get("scale")
        if self.basis_spec is not None:
            self.basis, self.inducing_points = tensors["basis"], tensors["inducing_points"]
