r"""The effective dimension ``γ = tr(H^{-1} M)``, exact or estimated from posterior samples.

``γ_g = d_g − α_g tr_g(H^{-1})`` per prior group ``g`` enters MacKay's update of the prior
precision (:mod:`~linearised_laplace.tuning.mackay`). The sample-based estimates (Antorán et al.,
2023) use zero-mean posterior samples ``ζ_k ~ N(0, H^{-1})``:

* function space (default): ``γ̂ = (1/K) Σ_k ζ_kᵀ M ζ_k = (1/K) Σ_k ‖Φ ζ_k‖²_B``, variance
  ``2 Σ_j r_j²`` with ``r_j = μ_j / (μ_j + α)``: best when ``γ ≪ D`` (all networks);
* weight space: ``γ̂ = D − (1/K) Σ_k ζ_kᵀ A ζ_k``, variance ``2 Σ_j (1 − r_j)²``: best when ``γ ≈ D``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.linear_model import LinearGaussianModel

GAMMA_ESTIMATORS = ("function", "weight")


def group_sum(values: Tensor, group_ids: Tensor, n_groups: int) -> Tensor:
    """Sum ``[..., D]`` over the coordinates of each group: ``[..., G]``."""
    out = values.new_zeros(*values.shape[:-1], n_groups)
    return out.index_add_(-1, group_ids.to(values.device), values)


def function_space_gamma(
    model: LinearGaussianModel, samples: Tensor, n_groups: int, ggn_z: Tensor | None = None
) -> Tensor:
    """``γ̂_g = (1/K) Σ_k ⟨ζ_{k,g}, (M ζ_k)_g⟩``: ``[G]`` (float64).

    One data pass, or none when the products ``M ζ_k`` ``[K, D]`` are given as ``ggn_z``.
    """
    if ggn_z is None and n_groups == 1:
        return model.function_norms(samples).mean().double().reshape(1)
    if ggn_z is None:
        ggn_z = model.ggn_products(samples)
    return group_sum((samples * ggn_z).double(), model.prior.groups, n_groups).mean(0)


def weight_space_gamma(
    prior_diag: Tensor, samples: Tensor, group_ids: Tensor, n_groups: int
) -> Tensor:
    """``γ̂_g = d_g − (1/K) Σ_k Σ_{j∈g} a_j ζ_{kj}²``: ``[G]`` (float64)."""
    sizes = group_sum(torch.ones_like(prior_diag, dtype=torch.float64), group_ids, n_groups)
    spent = group_sum((prior_diag * samples.square()).double(), group_ids, n_groups).mean(0)
    return sizes - spent


def exact_gamma(
    covariance_diag: Tensor, prior_diag: Tensor, group_ids: Tensor, n_groups: int
) -> Tensor:
    """``γ_g = d_g − Σ_{j∈g} a_j (H^{-1})_{jj}``: ``[G]`` (float64)."""
    sizes = group_sum(torch.ones_like(prior_diag, dtype=torch.float64), group_ids, n_groups)
    return sizes - group_sum((prior_diag * covariance_diag).double(), group_ids, n_groups)


def eigen_gamma(eigenvalues: Tensor, alpha: Tensor) -> Tensor:
    """Exact ``γ = Σ_j μ_j / (μ_j + α)`` ``[1]`` of an isotropic prior, from the GGN's eigenvalues."""
    return (eigenvalues / (eigenvalues + alpha)).sum().reshape(1)


def check_gamma(gamma: str) -> None:
    """Validate the name of a ``γ̂`` estimator."""
    if gamma not in GAMMA_ESTIMATORS:
        raise ValueError(f"`gamma` must be one of {GAMMA_ESTIMATORS}, got {gamma!r}.")
