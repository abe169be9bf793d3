r"""The effective dimension ``γ = tr(H^{-1} M)``, exact or estimated from posterior samples.

``γ_g = d_g − α_g tr_g(H^{-1})`` per prior group ``g`` enters MacKay's update of the prior
precision (:mod:`~linearised_laplace.tuning.mackay`). The sample-based estimates (Antorán et al.,
2023) use zero-mean posterior samples ``ζ_k ~ N(0, H^{-1})``:

* function space (default): ``γ̂ = (1/K) Σ_k ζ_kᵀ M ζ_k = (1/K) Σ_k ‖Φ ζ_k‖²_B``, variance
  ``2 Σ_j r_j²`` with ``r_j = μ_j / (μ_j + α)``: best when ``γ ≪ D`` (all networks);
* weight space: ``γ̂ = D − (1/K) Σ_k ζ_kᵀ A ζ_k``, variance ``2 Σ_j (1 − r_j)²``: best when ``γ ≈ D``;
* dual space: a dual solve's ``w_k = (I + LᵀKL)^{-1} b_k`` has covariance ``(I + LᵀKL)^{-1}``,
  whose trace is ``n·C − γ``, so ``γ̂ = n·C − (1/K) Σ_k ‖w_k‖²``, variance ``2 Σ_i (1 − r_i)²`` over
  the ``n·C`` observations' directions: best when ``γ ≈ n·C`` (an overfit network), where the
  function-space estimate's error, relative to ``n·C − γ``, is largest. ``"auto"`` pools the two
  by their sample variances where the solve is dual and the prior one group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.linear_model import LinearGaussianModel

GAMMA_ESTIMATORS = ("auto", "function", "weight")


def group_sum(values: Tensor, group_ids: Tensor, n_groups: int) -> Tensor:
    """Sum ``[..., D]`` over the coordinates of each group: ``[..., G]``."""
    out = values.new_zeros(*values.shape[:-1], n_groups)
    return out.index_add_(-1, group_ids.to(values.device), values)


def function_space_terms(
    model: LinearGaussianModel, samples: Tensor, ggn_z: Tensor | None = None
) -> Tensor:
    """``‖Φ ζ_k‖²_B`` per sample: ``[K]`` (float64; one data pass, none given ``ggn_z = M ζ``)."""
    if ggn_z is None:
        return model.function_norms(samples).double()
    return (samples * ggn_z).double().sum(-1)


def dual_space_terms(w: Tensor) -> Tensor:
    """``n·C − ‖w_k‖²`` per dual solution ``w`` ``[K, n·C]``: ``[K]`` (float64), unbiased for ``γ``."""
    return w.shape[-1] - w.double().square().sum(-1)


def pooled_gamma(first: Tensor, second: Tensor) -> Tensor:
    """Two unbiased per-sample estimates ``[K]`` of ``γ``, pooled by inverse sample variance: ``[1]``.

    The weights come from the same ``K`` samples (a small bias at small ``K``); equal variances
    (both exact) give the plain mean of the two.
    """
    spread = torch.stack([first.var(), second.var()]).clamp_min(torch.finfo(first.dtype).tiny)
    weights = spread.flip(0) / spread.sum()
    return (weights[0] * first.mean() + weights[1] * second.mean()).reshape(1)


def function_space_gamma(
    model: LinearGaussianModel, samples: Tensor, n_groups: int, ggn_z: Tensor | None = None
) -> Tensor:
    """``γ̂_g = (1/K) Σ_k ⟨ζ_{k,g}, (M ζ_k)_g⟩``: ``[G]`` (float64).

    One data pass, or none when the products ``M ζ_k`` ``[K, D]`` are given as ``ggn_z``.
    """
    if n_groups == 1:
        return function_space_terms(model, samples, ggn_z).mean().reshape(1)
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


def fixed_point_precision(eigenvalues: Tensor, norm: float, tol: float = 1e-12) -> float:
    """MacKay's fixed point ``α = γ(α)/‖θ̄‖²`` for a mean that does not move with ``α`` (``θ*``).

    ``eigenvalues``: the GGN's, in the coordinates of the isotropic prior; ``norm``: ``‖θ̄‖²``.
    The iteration contracts (``γ(α)/α`` falls in ``α``), from ``α = 1`` until ``|Δα/α| < tol``.
    """
    eigenvalues, alpha = eigenvalues.double(), 1.0
    for _ in range(10_000):
        alpha, previous = float(eigen_gamma(eigenvalues, alpha)) / norm, alpha
        if abs(alpha / previous - 1) < tol:
            return alpha
    raise RuntimeError(f"MacKay's iteration did not reach {tol:g} in 10,000 steps (α {alpha:.6g}).")


def check_gamma(gamma: str) -> None:
    """Validate the name of a ``γ̂`` estimator."""
    if gamma not in GAMMA_ESTIMATORS:
        raise ValueError(f"`gamma` must be one of {GAMMA_ESTIMATORS}, got {gamma!r}.")
