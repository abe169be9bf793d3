"""The deep-image-prior U-Net: GroupNorm, LeakyReLU, strided-conv downsampling, bilinear upsampling.

As in the linearised-DIP code (Barbano, Antorán et al.): the same width at every scale, narrow skip
connections, and a linear ``1×1`` output layer (no sigmoid).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _block(n_in: int, n_out: int, stride: int, groups: int, dropout: float) -> nn.Sequential:
    layers = [
        nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1),
        nn.GroupNorm(min(groups, n_out), n_out),
        nn.LeakyReLU(0.2),
        nn.Conv2d(n_out, n_out, 3, padding=1),
        nn.GroupNorm(min(groups, n_out), n_out),
        nn.LeakyReLU(0.2),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """A U-Net of ``depth`` scales and ``width`` channels everywhere.

    Args:
        depth: Scales (the input side must be divisible by ``2^(depth−1)``).
        width: Channels at every scale.
        skip: Channels of each skip connection (0 disables it).
        groups: GroupNorm groups.
        dropout: ``Dropout2d`` after every block (for the MC-dropout baseline).
    """

    def __init__(
        self, depth: int = 5, width: int = 64, skip: int = 4, groups: int = 4, dropout: float = 0.0
    ):
        super().__init__()
        self.depth = depth
        self.inc = _block(1, width, 1, groups, dropout)
        self.down = nn.ModuleList(
            _block(width, width, 2, groups, dropout) for _ in range(depth - 1)
        )
        self.skips = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, skip, 1), nn.GroupNorm(1, skip), nn.LeakyReLU(0.2))
            if skip
            else nn.Identity()
            for _ in range(depth - 1)
        )
        self.up = nn.ModuleList(
            _block(width + skip, width, 1, groups, dropout) for _ in range(depth - 1)
        )
        self.skip = skip
        self.outc = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        features = [self.inc(x)]
        for down in self.down:
            features.append(down(features[-1]))
        out = features.pop()
        for level in reversed(range(self.depth - 1)):
            out = nn.functional.interpolate(
                out, scale_factor=2, mode="bilinear", align_corners=False
            )
            if self.skip:
                out = torch.cat([out, self.skips[level](features[level])], dim=1)
            out = self.up[level](out)
        return self.outc(out)


class Flatten(nn.Module):
    """``[N, 1, H, W]`` network outputs as ``[N, H·W]`` (the library's ``[N, C]`` convention)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x).flatten(1)
