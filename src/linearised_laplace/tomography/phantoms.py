"""Test images: the Shepp–Logan phantom (scikit-image's, bundled) and seeded random ellipses."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shepp_logan(size: int = 128) -> Tensor:
    """scikit-image's Shepp–Logan phantom resized to ``size × size`` (float32, values in [0, 1])."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    image = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return torch.tensor(image, dtype=torch.float32)


def ellipses(size: int = 128, n: int = 10, seed: int = 0) -> Tensor:
    """A seeded image of ``n`` random overlapping ellipses inside the inscribed disc: ``[size, size]``.

    Intensities add and the result is rescaled to ``[0, 1]``.
    """
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size, dtype=torch.float64) - size / 2 + 0.5) / (size / 2)
    y, x = torch.meshgrid(-coords, coords, indexing="ij")
    image = torch.zeros(size, size, dtype=torch.float64)
    for _ in range(n):
        cx, cy = (torch.rand(2, generator=gen) - 0.5).tolist()
        a, b = (0.05 + 0.3 * torch.rand(2, generator=gen)).tolist()
        angle = math.pi * float(torch.rand(1, generator=gen))
        value = 0.2 + 0.8 * float(torch.rand(1, generator=gen))
        xr = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
        yr = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
        image += value * ((xr / a) ** 2 + (yr / b) ** 2 <= 1).double()
    image *= (x**2 + y**2 <= 1).double()
    return (image / image.max().clamp_min(1e-12)).float()
