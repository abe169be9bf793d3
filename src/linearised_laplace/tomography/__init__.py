"""Computed tomography with a linearised deep image prior (Antorán et al., 2023, Table 3)."""

from .phantoms import ellipses, shepp_logan
from .ray_transform import RayTransform

__all__ = ["RayTransform", "ellipses", "shepp_logan"]
