r"""Linearised deep image prior: uncertainty for a DIP reconstruction through its tangent linear model.

The U-Net's image ``U(z; θ)`` is linearised at the DIP weights; the likelihood is Gaussian on the
measurements ``y = A U + ε``, ``ε ~ N(0, σ² I)``, so the features are ``A J`` with the (sparse) ray
transform applied outside the autodiff transforms. Samples are drawn in observation space (``m``
unknowns per sample, ``m ≪ D``), and the image samples ``J ζ_s`` around the reconstruction give
pixel and patch uncertainty (Antorán et al., ICLR 2023, §6; Barbano et al., 2022).

:func:`exact_linearised_dip` is the exact baseline: the ``m × m`` observation covariance built
column by column, an exact MacKay EM from its eigendecomposition, and exact Matheron samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..coordinates.g_prior import ScaledFeatures
from ..core.progress import progress_bar
from ..methods.sampled import SampledLaplace
from ..model.data import Data
from ..model.likelihoods import Gaussian
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource
from ..model.priors import make_prior
from ..network.features import OutputMap
from ..network.linearisation import Linearisation
from ..posteriors.expectation import EStep
from ..solvers.kernel import dual_pullback, dual_rhs, kernel_vec
from ..tuning.em import run_em
from ..tuning.state import EMState
from .ray_transform import RayTransform
from .unet import Flatten


def observation_map(operator: RayTransform) -> tuple:
    """The ray transform on flattened images ``[..., H·W] ↦ [..., m]`` and its adjoint."""
    size = operator.size

    def forward(images: Tensor) -> Tensor:
        return operator(images.reshape(*images.shape[:-1], size, size)).flatten(-2)

    def adjoint(sinograms: Tensor) -> Tensor:
        return operator.adjoint(
            sinograms.reshape(*sinograms.shape[:-1], operator.n_angles, size)
        ).flatten(-2)

    return forward, adjoint


class LinearisedDIP(SampledLaplace):
    r"""Sampled linearised Laplace for a deep-image-prior U-Net and a ray transform.

    Fit with the pair ``(z, y)``: the network input ``[1, 1, H, W]`` and the measurements
    ``[1, m]``. The g-prior is on by default, the mean is the affine one (the reconstruction) and
    sampling is in observation space (dual).

    Args:
        unet: The fitted DIP network (image output ``[1, 1, H, W]``).
        operator: The ray transform.
        sigma_noise: Measurement noise standard deviation.
        **kwargs: Keywords of :class:`~linearised_laplace.SampledLaplace`.
    """

    def __init__(self, unet: nn.Module, operator: RayTransform, *, sigma_noise: float, **kwargs):
        kwargs.setdefault("g_prior", True)
        kwargs.setdefault("g_prior_probes", 64)
        kwargs.setdefault("space", "dual")
        kwargs.setdefault("feature_memory_gib", 0.0)  # Φ = A J has one row per measurement
        coordinates = {"output_map": observation_map(operator)}
        super().__init__(
            Flatten(unet), "regression", sigma_noise=sigma_noise, coordinates=coordinates, **kwargs
        )
        self.operator = operator

    def optimize_prior_precision(
        self, train_loader, max_iter: int = 5, tol: float = 1e-2, **kwargs
    ) -> list[dict]:
        """Sample-based EM with the affine mean (the reconstruction's own linear model), ``σ`` known."""
        kwargs.setdefault("mean", "affine")
        kwargs.setdefault("update_sigma", False)
        return super().optimize_prior_precision(train_loader, max_iter, tol, **kwargs)

    def image_samples(self, z: Tensor, n_samples: int | None = None) -> Tensor:
        """Zero-mean image deviations ``J ζ_s``: ``[S, H, W]``."""
        size = self.operator.size
        return self.linearisation.jvp(z, self.sample(n_samples))[1].reshape(-1, size, size)


@dataclass
class ExactResult:
    """The exact linearised DIP: hyperparameters, EM history and image samples."""

    prior_precision: float
    history: list[dict]
    samples: Tensor
    seconds: float


def exact_linearised_dip(
    unet: nn.Module,
    operator: RayTransform,
    z: Tensor,
    y: Tensor,
    sigma_noise: float,
    scale: Tensor | None,
    *,
    prior_precision: float = 1.0,
    max_iter: int = 5,
    tol: float = 1e-2,
    n_samples: int = 1024,
    chunk: int = 32,
    seed: int = 0,
    progress: bool | None = None,
) -> ExactResult:
    r"""Exact inference for the linearised DIP in observation space.

    Builds ``G = Lᵀ J̃ J̃ᵀ L`` (``m × m``, ``L = σ^{-1} A``) column by column from VJPs and JVPs, so
    that at precision ``α`` the observation system is ``I + G/α``. Its eigendecomposition gives
    the exact ``γ = Σ g_i / (g_i + α)`` and the affine mean (one VJP) for every EM step, run by the
    library's guarded MacKay loop (:func:`~linearised_laplace.tuning.em.run_em`), and exact
    Matheron image samples ``J̃ ζ``.

    Args:
        unet: The fitted DIP network.
        operator: The ray transform.
        z: Network input ``[1, 1, H, W]``.
        y: Measurements ``[1, m]``.
        sigma_noise: Noise standard deviation.
        scale: The g-prior scale ``s`` (from :class:`LinearisedDIP`), or ``None``.
        prior_precision: Initial ``α``.
        max_iter: EM steps at most.
        tol: Stop when ``|Δ log α| < tol`` (else warn at ``max_iter``).
        n_samples: Exact image samples.
        chunk: Unit vectors (and samples) per batch.
        seed: Seeds the samples.
        progress: Show progress bars.

    Returns:
        The result with ``samples`` ``[S, H, W]``.
    """
    start = time.perf_counter()
    lin = Linearisation(Flatten(unet))
    features = OutputMap(lin, *observation_map(operator))
    if scale is not None:
        features = ScaledFeatures(features, scale)
    unit = make_prior(1.0, torch.zeros(lin.n_params, dtype=torch.long), ["θ"])
    model = LinearGaussianModel(features, Gaussian(sigma_noise), unit, Data((z, y)))
    m = y.numel()
    columns = []
    for block in progress_bar(
        torch.eye(m, dtype=lin.dtype, device=lin.device).split(chunk),
        enabled=progress,
        desc="exact: G",
    ):
        columns.append(kernel_vec(model, block).double())
    gram = torch.cat(columns)
    gram = 0.5 * (gram + gram.T)
    values, vectors = torch.linalg.eigh(gram)
    values = values.clamp_min(0)
    # Affine targets t = y − f0 + J̃ w*, then Lᵀt with L = I/σ.
    anchor = lin.theta_star if scale is None else lin.theta_star / scale
    f0, jw = features.jvp(z, anchor[None])
    target = ((y.to(f0.dtype) - f0 + jw[0]) / sigma_noise).double().reshape(-1)
    projected = vectors.T @ target
    group_ids = torch.zeros(lin.n_params, dtype=torch.long)

    def e_step(state: EMState) -> EStep:
        alpha = float(state.precision[0])
        w = vectors @ (projected / (1 + values / alpha))  # (I + G/α)^{-1} Lᵀ t
        at_alpha = model.with_prior(unit.with_precision(alpha))
        mean = dual_pullback(at_alpha, w[None].to(lin.dtype))[0].double() / alpha  # J̃ᵀ L w / α
        return EStep(mean, (values / (values + alpha)).sum()[None])

    initial = EMState(0, torch.tensor([float(prior_precision)], dtype=torch.float64), 1.0, anchor)
    state = run_em(
        e_step, initial, group_ids, max_iter=max_iter, tol=tol, clip_gamma=False, progress=progress
    )
    alpha, history = float(state.precision[0]), state.history
    # Exact Matheron samples: ζ = θ₀ − J̃ᵀ L w / α, (I + G/α) w = Lᵀ J̃ θ₀ − ν.
    model = LinearGaussianModel(
        features, Gaussian(sigma_noise), unit.with_precision(alpha), Data((z, y))
    )
    samples = []
    size = operator.size
    for first in progress_bar(range(0, n_samples, chunk), enabled=progress, desc="exact: samples"):
        k = min(chunk, n_samples - first)
        xi = NoiseSource(seed + first, stream="exact-prior").prior(
            k, lin.n_params, dtype=lin.dtype, device=lin.device
        )
        theta0 = xi / math.sqrt(alpha)
        rhs = dual_rhs(model, theta0, NoiseSource(seed + first, stream="exact-points")).double()
        w = (vectors @ ((vectors.T @ rhs.T) / (1 + values / alpha)[:, None])).T.to(lin.dtype)
        zeta = theta0 - dual_pullback(model, w) / alpha
        image_scale = zeta if scale is None else zeta * scale
        samples.append(lin.jvp(z, image_scale)[1].reshape(k, size, size))
    return ExactResult(alpha, history, torch.cat(samples), time.perf_counter() - start)
