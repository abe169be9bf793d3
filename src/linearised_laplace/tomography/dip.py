r"""Deep-image-prior reconstruction (Ulyanov et al., 2018): fit a U-Net's output to the measurements.

Minimise ``‖A U(z; θ) − y‖² / m + γ TV(U(z; θ))`` over ``θ`` by Adam from a seeded initialisation,
with the filtered back-projection as the fixed input ``z``, and keep the parameters of the lowest
loss seen (the DIP overfits the noise if run long, Ulyanov et al., CVPR 2018).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.checks import check_finite
from ..core.progress import progress_bar
from .ray_transform import RayTransform


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation ``Σ |∂_x u| + |∂_y u|`` of images ``[..., H, W]``."""
    return (images[..., 1:, :] - images[..., :-1, :]).abs().sum() + (
        images[..., :, 1:] - images[..., :, :-1]
    ).abs().sum()


@dataclass(frozen=True)
class DIPConfig:
    """Deep-image-prior settings.

    Args:
        iterations: Adam steps.
        lr: Adam step size.
        tv: Weight ``γ`` of the total variation.
        seed: Seeds the network's initialisation.
    """

    iterations: int = 2000
    lr: float = 1e-3
    tv: float = 1e-4
    seed: int = 0


def fit_dip(
    net: nn.Module,
    measurements: Tensor,
    operator: RayTransform,
    config: DIPConfig = DIPConfig(),
    progress: bool | None = None,  # noqa: B008
) -> tuple[Tensor, list[float]]:
    """Fit ``net`` in place to sinogram ``measurements`` ``[n_angles, size]``; returns (input, losses).

    Raises:
        ValueError: The measurements are not finite or do not match the operator.
    """
    if measurements.shape != (operator.n_angles, operator.size):
        raise ValueError(
            f"Measurements must have shape [{operator.n_angles}, {operator.size}] (angles × "
            f"detector bins) for this operator, got {list(measurements.shape)}."
        )
    check_finite("The measurements", measurements)
    z = operator.fbp(measurements[None])[None].detach()  # [1, 1, H, W]
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    best, best_state, losses = float("inf"), None, []
    m = measurements.numel()
    net.train()
    with progress_bar(range(config.iterations), enabled=progress, desc="deep image prior") as bar:
        for _ in bar:
            optimiser.zero_grad()
            image = net(z)[0, 0]
            loss = (
                operator(image) - measurements
            ).square().sum() / m + config.tv * total_variation(image)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if losses[-1] < best:
                best, best_state = losses[-1], copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    return z, losses
