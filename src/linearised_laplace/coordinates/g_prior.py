r"""The g-prior: feature normalisation that makes linearised Laplace invariant to weight scales.

Each parameter is rescaled so that its diagonal GGN entry is one, ``J̃ = J diag(s)`` with
``s_j = M_jj^{-1/2}``, ``M = Φᵀ B Φ``, and an isotropic prior is placed on the rescaled weights
``θ̃ = θ / s``. Equivalently the prior on the original weights is ``N(0, α^{-1} diag(M)^{-1})``
("diagonal g-prior"; Antorán et al., 2023, Eq. 17). Rescaling any parameter by ``c`` rescales its
Jacobian column by ``1/c`` and ``s_j`` by ``c``, so ``J̃`` — and with it the evidence, the MacKay
``α``, the samples ``J̃ ζ̃`` and the predictive — does not change. This removes the pathology of
weights that feed a normalisation layer, whose scale is set by the optimiser, not by the data.

``s`` is computed once, from ``θ*``, and kept fixed during EM.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.progress import progress_bar
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource
from ..network.features import FeatureOperator, Pullback

MIN_DIAGONAL = 1e-6  # parameters without curvature (dead units) get s = 1e3, harmlessly
JACOBIAN_BUDGET = 2**24  # numbers per block of per-example Jacobians


class ScaledFeatures(FeatureOperator):
    """``J̃(x) = J(x) diag(s)``: a feature operator with rescaled columns.

    Args:
        features: The unscaled operator.
        scale: ``[D]`` positive scale ``s``.
    """

    def __init__(self, features: FeatureOperator, scale: Tensor):
        self.features = features
        self.scale = scale.to(dtype=features.dtype, device=features.device)
        self.n_params, self.dtype, self.device = features.n_params, features.dtype, features.device

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.features.forward(x)

    def jvp(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self.features.jvp(x, tangents * self.scale)

    def pullback(self, x: Tensor) -> tuple[Tensor, Pullback]:  # noqa: D102
        f0, pull = self.features.pullback(x)
        return f0, lambda u: pull(u) * self.scale

    def per_example_vjp(self, x: Tensor, cotangents: Tensor) -> Tensor:  # noqa: D102
        return self.features.per_example_vjp(x, cotangents) * self.scale

    def to_dense(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.features.to_dense(x) * self.scale


def ggn_diagonal_exact(model: LinearGaussianModel, progress: bool | None = None) -> Tensor:
    """``diag(M) = Σ_i Σ_c (L_iᵀ J_i)_{c,:}²`` exactly, from per-example Jacobians: ``[D]``."""
    features, data = model.features, model.data
    total = torch.zeros(features.n_params, dtype=torch.float64, device=features.device)
    chunk = max(1, min(data.batch_size, JACOBIAN_BUDGET // (model.n_outputs * features.n_params)))
    batches = data.batches(batch_size=chunk)
    for _, x, _ in progress_bar(batches, enabled=progress, desc="g-prior (exact)"):
        jac = features.to_dense(x).to(torch.float64)  # [b, C, D]
        factor = model.likelihood.factor(features.forward(x).to(torch.float64))  # [b, C, C]
        total += (factor.transpose(1, 2) @ jac).square().sum((0, 1))
    return data.all_reduce(total)


def ggn_diagonal_sampled(
    model: LinearGaussianModel, n_probes: int, source: NoiseSource, progress: bool | None = None
) -> Tensor:
    """Unbiased ``diag(M) ≈ (1/P) Σ_p Σ_i (J_iᵀ L_i ν_{i,p})²`` from per-example VJPs: ``[D]``.

    Summing per-point squares (``n·P`` terms) gives a far lower variance than squaring summed VJPs.
    """
    features, data = model.features, model.data
    kw = {"dtype": features.dtype, "device": features.device}
    total = torch.zeros(features.n_params, dtype=torch.float64, device=features.device)
    for idx, x, _ in progress_bar(data.batches(), enabled=progress, desc="g-prior (sampled)"):
        f0 = features.forward(x)
        nu = source.points(idx, n_probes, f0.shape[-1], **kw)
        cotangents = model.likelihood.factor_vec(f0, nu)
        for probe in cotangents:
            total += features.per_example_vjp(x, probe).to(torch.float64).square().sum(0)
    return data.all_reduce(total) / n_probes


def ggn_diagonal(
    model: LinearGaussianModel, source: NoiseSource, n_probes: int = 8, progress: bool | None = None
) -> Tensor:
    """``diag(M)``: exact when one example's Jacobian ``[C, D]`` fits the block budget, else sampled."""
    if model.n_outputs * model.n_params <= JACOBIAN_BUDGET:
        return ggn_diagonal_exact(model, progress)
    return ggn_diagonal_sampled(model, n_probes, source, progress)


def g_prior_scale(diagonal: Tensor) -> Tensor:
    """``s = max(diag(M), 10⁻⁶)^{-1/2}``: ``[D]``."""
    return diagonal.clamp_min(MIN_DIAGONAL).rsqrt()


def fit_g_prior_scale(
    model: LinearGaussianModel, seed: int, n_probes: int = 8, progress: bool | None = None
) -> Tensor:
    """The g-prior scale ``s`` ``[D]`` of ``model``'s features, in their dtype."""
    source = NoiseSource(seed, stream="g-prior")
    diagonal = ggn_diagonal(model, source, n_probes, progress=progress)
    return g_prior_scale(diagonal).to(model.features.dtype)
