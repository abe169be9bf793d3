r"""The coordinates ``z`` a posterior lives in: which weights, how scaled, in what basis, seen how.

``z`` stands for the weight deviation ``P z``, ``P = diag(s) Vᵀ``: ``s`` the g-prior scale (1 without
it), ``V`` a Nyström basis (the identity without one), over the linearised weights (all, a
subnetwork, the last layer, patterns); the likelihood may see the outputs through a linear map.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import Tensor

from ..core.checks import check_sample_budget
from ..core.kronecker import KroneckerGGN
from ..model.data import Data
from ..model.likelihoods import Likelihood
from ..model.linear_model import LinearGaussianModel
from ..model.priors import Prior
from ..network.features import FeatureOperator, OutputMap
from ..network.kfac import kronecker_ggn
from ..network.linearisation import Linearisation
from .g_prior import ScaledFeatures, fit_g_prior_scale
from .ntk_basis import DEFAULT_RANK, Basis, ProjectedFeatures, fit_nystrom
from .ranking import Ranking, choose_subnetwork


class Coordinates:
    """The map between a posterior's coordinates and the network's weights.

    Args:
        linearisation: The network linearised over the chosen weights (all, for a ranking).
        g_prior: Scale the features to unit GGN diagonal (``g_prior_probes``: where sampled).
        ranking: A subnetwork to choose from the data; ``basis``: a Nyström basis to fit.
        output_map: ``(forward, adjoint)``, a linear map the likelihood sees the outputs through.

    Attributes:
        scale: ``[D]`` the g-prior scale; ``basis``: ``[K, D]`` ``V``; ``eigenvalues``: ``[K]``;
            ``inducing_points``: ``[M]`` (each ``None`` until :meth:`fit`, or unused).
    """

    def __init__(
        self,
        linearisation: Linearisation,
        *,
        g_prior: bool = False,
        g_prior_probes: int = 8,
        ranking: Ranking | None = None,
        basis: Basis | None = None,
        output_map: tuple | None = None,
    ):
        self.linearisation, self.ranking, self.output_map = linearisation, ranking, output_map
        self.g_prior, self.g_prior_probes, self.basis_spec = g_prior, g_prior_probes, basis
        self.forget()

    def forget(self) -> None:
        """Drop what was fitted at former weights (a chosen subnetwork stays)."""
        self.scale = self.basis = self.eigenvalues = self.inducing_points = None

    @property
    def dim(self) -> int:
        """The number of coordinates (for a basis not fitted yet: its requested rank)."""
        if self.basis_spec is not None:
            return (
                len(self.basis) if self.basis is not None else self.basis_spec.rank or DEFAULT_RANK
            )
        return self.ranking.size if self.ranking is not None else self.linearisation.n_params

    def check_prior(self, prior) -> None:
        """Raise unless a ranked subnetwork or a basis (chosen from the data) has one precision."""
        if (self.ranking is not None or self.basis_spec is not None) and not prior.is_isotropic:
            what = "a Nyström basis" if self.basis_spec is not None else "a ranked subnetwork"
            raise ValueError(
                f"The prior groups of {what} are not known before it is fitted to the data: pass "
                "a single `prior_precision`."
            )

    def groups(self) -> tuple[Tensor, tuple[str, ...]]:
        """The prior group of each coordinate, and the groups' names."""
        if self.basis is not None:
            return torch.zeros(len(self.basis), dtype=torch.long), ("nystrom basis",)
        return self.linearisation.selection.group_ids, self.linearisation.selection.names

    def fit(self, data: Data, likelihood: Likelihood, prior: Prior, seed: int, progress) -> None:
        """Fit, once each and in this order, a ranked subnetwork, the scale ``s`` and the basis ``V``."""
        lin = self.linearisation
        if self.ranking is not None:
            model = LinearGaussianModel(lin, likelihood, prior, data)
            indices = choose_subnetwork(model, self.ranking, seed, progress)
            self.linearisation = Linearisation(
                lin.model,
                indices,
                exclude_norm=self.ranking.exclude_norm,
                tangent_batching=lin.tangent_batching,
                enable_backprop=lin.enable_backprop,
            )
            self.ranking = None
        if self.g_prior and self.scale is None:
            model = LinearGaussianModel(self.observed(), likelihood, prior, data)
            self.scale = fit_g_prior_scale(model, seed, self.g_prior_probes, progress)
        if self.basis_spec is not None and self.basis is None:
            fitted = fit_nystrom(self.features(), data, self.basis_spec, seed)
            self.basis, self.eigenvalues, self.inducing_points = fitted

    def kronecker(self, data: Data, likelihood: Likelihood) -> KroneckerGGN | None:
        """The KFAC approximation of the GGN in these coordinates (after :meth:`fit`), or None.

        KFAC covers whole Linear and Conv2d weights and biases seen by a built-in likelihood
        without an output map or a basis; a tensor it does not cover is preconditioned by its
        diagonal, with a warning that names it.
        """
        loss = likelihood.kfac_loss()
        plain = self.output_map is None and self.basis_spec is None and self.ranking is None
        lin, x = self.linearisation, data.subset(torch.zeros(1, dtype=torch.long))[0]
        if loss is None or not plain or not isinstance(x, Tensor):
            why = (
                f"the {type(likelihood).__name__} likelihood has no KFAC loss"
                if loss is None
                else "it needs plain tensor inputs and the network's own weights and outputs"
            )
            warnings.warn(
                f"KFAC preconditioning is not available here ({why}); the solver uses the "
                "diagonal (Jacobi) preconditioner instead.",
                UserWarning,
                stacklevel=4,
            )
            return None
        batches = ((x.to(lin.device), y.to(lin.device)) for _, x, y in data.batches())
        ggn = kronecker_ggn(lin, *loss, batches, len(data), data.all_reduce)
        if ggn.uncovered:
            shown = ", ".join(ggn.uncovered[:6]) + (", ..." if len(ggn.uncovered) > 6 else "")
            warnings.warn(
                f"KFAC covers only Linear and Conv2d weights and biases; {shown} fall back to "
                "the diagonal (Jacobi) preconditioner.",
                UserWarning,
                stacklevel=4,
            )
        return ggn if self.scale is None else ggn.in_coordinates(self.scale)

    def observed(self) -> FeatureOperator:
        """The network's features as the likelihood sees them (through the output map)."""
        lin = self.linearisation
        return lin if self.output_map is None else OutputMap(lin, *self.output_map)

    def transform(self, features: FeatureOperator) -> FeatureOperator:
        """Features ``Φ`` of the linearised weights, in these coordinates: ``Φ P``."""
        features = features if self.scale is None else ScaledFeatures(features, self.scale)
        return features if self.basis is None else ProjectedFeatures(features, self.basis)

    def features(self) -> FeatureOperator:
        """The linear model's features: the likelihood's view, in these coordinates."""
        return self.transform(self.observed())

    def to_parameters(self, z: Tensor) -> Tensor:
        """``[S, P]`` coordinates to ``[S, D]`` weight deviations ``P z``."""
        z = z if self.basis is None else z @ self.basis.to(z.dtype)
        return z if self.scale is None else z * self.scale

    def covariance_to_parameters(self, covariance: Tensor) -> Tensor:
        """``P Σ Pᵀ``: ``[P, P]`` to ``[D, D]`` float64 (of rank ``K`` in a basis)."""
        s = None if self.scale is None else self.scale.double()
        if self.basis is None:
            return covariance if s is None else s[:, None] * covariance * s[None, :]
        d = self.linearisation.n_params
        check_sample_budget(
            d * d, f"A dense {d}×{d} covariance", "Use `feature_covariance` and `basis`."
        )
        p = self.basis.double() if s is None else self.basis.double() * s
        return p.T @ covariance @ p

    def precision_to_parameters(self, precision: Tensor) -> Tensor:
        """``P^{-T} H P^{-1}``: ``[D, D]`` float64; only without a basis (``P`` invertible)."""
        if self.basis is not None:
            raise ValueError(
                "The posterior is degenerate outside the Nyström basis; use `feature_covariance` "
                "(K×K, in the basis `basis`) or `posterior_covariance` (rank K)."
            )
        if self.scale is None:
            return precision
        inv = 1 / self.scale.double()
        return inv[:, None] * precision * inv[None, :]

    def prior_diag_to_parameters(self, diag: Tensor) -> Tensor:
        """``diag(P^{-T} A P^{-1})`` ``[D]`` of the prior diagonal ``[P]``; only without a basis."""
        if self.basis is not None or self.basis_spec is not None:
            raise ValueError(
                "The prior is isotropic in the Nyström basis and undefined outside it; use "
                "`prior_precision` (the basis' one value) and `basis`."
            )
        return diag if self.scale is None else diag / self.scale.double() ** 2

    def anchor(self) -> Tensor:
        """The network's weights ``θ*`` in these coordinates."""
        theta = self.linearisation.theta_star
        theta = theta if self.scale is None else theta / self.scale
        return theta if self.basis is None else self.basis.to(theta.dtype) @ theta

    def settings(self) -> dict:
        """What a saved posterior records of these coordinates' configuration."""
        return {} if self.basis_spec is None else dataclasses.asdict(self.basis_spec)

    def tensors(self) -> dict[str, Tensor]:
        """What a saved posterior needs to rebuild these coordinates."""
        indices, tensors = self.linearisation.selection.indices, {}
        if indices is not None:
            tensors["selection_indices"] = indices
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
