r"""A 2-D parallel-beam ray transform as a precomputed sparse matrix, and filtered back-projection.

Row ``a·n + k`` of the matrix integrates the image along the line at angle ``θ_a`` through detector
bin ``k`` (bins one pixel wide, centred like scikit-image's ``radon``): points every ``step`` pixels
along the ray, each spread bilinearly over its four nearest pixels (Joseph's method). The adjoint is
the exact transpose. Applying it to a batch is a sparse matrix product, wrapped in an autograd
function so that its gradient is the transposed product rather than a trace through indexing.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse
import torch
from torch import Tensor


def ray_transform_matrix(
    size: int, angles: Tensor | np.ndarray, step: float = 0.25
) -> scipy.sparse.csr_matrix:
    """The ``[n_angles · size, size²]`` ray transform of ``size × size`` images.

    Args:
        size: Image side (pixels); also the number of detector bins.
        angles: Projection angles in degrees.
        step: Sampling step along each ray, in pixels.
    """
    centre = size // 2
    s = np.arange(-size / 2, size / 2, step) + step / 2  # positions along the ray
    t = np.arange(size) - centre  # detector bins
    rows, cols, values = [], [], []
    for a, angle in enumerate(np.deg2rad(np.asarray(angles, dtype=np.float64))):
        x = t[:, None] * math.cos(angle) - s[None, :] * math.sin(angle)
        y = t[:, None] * math.sin(angle) + s[None, :] * math.cos(angle)
        col, row = x + centre, centre - y
        r0, c0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
        fr, fc = row - r0, col - c0
        detector = np.broadcast_to(a * size + np.arange(size)[:, None], r0.shape)
        for dr, dc, weight in (
            (0, 0, (1 - fr) * (1 - fc)),
            (0, 1, (1 - fr) * fc),
            (1, 0, fr * (1 - fc)),
            (1, 1, fr * fc),
        ):
            rr, cc = r0 + dr, c0 + dc
            inside = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size) & (weight > 0)
            rows.append(detector[inside])
            cols.append((rr * size + cc)[inside])
            values.append(weight[inside] * step)
    shape = (len(angles) * size, size * size)
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )
    matrix.sum_duplicates()
    return matrix


def _to_torch(matrix: scipy.sparse.csr_matrix, dtype: torch.dtype) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data).to(dtype),
            size=matrix.shape,
            check_invariants=False,
        )


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat: Tensor, matrix: Tensor, transpose: Tensor) -> Tensor:  # noqa: D102
        ctx.transpose = transpose
        return (matrix @ flat.T).T

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return (ctx.transpose @ grad.T).T, None, None


class RayTransform:
    """The parallel-beam ray transform ``A`` of ``size × size`` images and its adjoint.

    Args:
        size: Image side; the detector has as many bins.
        n_angles: Angles evenly spread over ``[0°, 180°)``.
        dtype: dtype of the matrix.
        step: Sampling step along rays (pixels).
        device: Where the matrix lives (images and sinograms must live there too).
    """

    def __init__(
        self,
        size: int,
        n_angles: int,
        dtype: torch.dtype = torch.float32,
        step: float = 0.25,
        device: torch.device | str = "cpu",
    ):
        if size < 2 or n_angles < 1:
            raise ValueError(
                f"Need an image of at least 2×2 pixels and at least one angle, got size={size}, n_angles={n_angles}."
            )
        self.size, self.n_angles = size, n_angles
        self.angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
        scipy_matrix = ray_transform_matrix(size, self.angles, step)
        self.matrix = _to_torch(scipy_matrix, dtype).to(device)
        self.transpose = _to_torch(scipy_matrix.T.tocsr(), dtype).to(device)
        self.dtype, self.device = dtype, torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_angles · size, size²)``."""
        return (self.n_angles * self.size, self.size * self.size)

    def _check_images(self, images: Tensor) -> Tensor:
        if images.ndim < 2 or images.shape[-1] != images.shape[-2]:
            raise ValueError(
                f"Images must be square with shape [..., H, W], got {list(images.shape)}."
            )
        if images.shape[-1] != self.size:
            raise ValueError(
                f"This ray transform is for {self.size}×{self.size} images, got "
                f"{images.shape[-2]}×{images.shape[-1]}; build RayTransform({images.shape[-1]}, ...)."
            )
        return images.reshape(-1, self.size * self.size).to(self.dtype)

    def __call__(self, images: Tensor) -> Tensor:
        """``A x`` for images ``[..., H, W]``: sinograms ``[..., n_angles, size]`` (differentiable)."""
        flat = self._check_images(images)
        out = _Apply.apply(flat, self.matrix, self.transpose)
        return out.reshape(*images.shape[:-2], self.n_angles, self.size)

    def adjoint(self, sinograms: Tensor) -> Tensor:
        """``Aᵀ y`` for sinograms ``[..., n_angles, size]``: images ``[..., H, W]``."""
        if sinograms.shape[-2:] != (self.n_angles, self.size):
            raise ValueError(
                f"Sinograms must have shape [..., {self.n_angles}, {self.size}] (angles × detector "
                f"bins) for this ray transform, got {list(sinograms.shape)}."
            )
        flat = sinograms.reshape(-1, self.n_angles * self.size).to(self.dtype)
        out = _Apply.apply(flat, self.transpose, self.matrix)
        return out.reshape(*sinograms.shape[:-2], self.size, self.size)

    def fbp(self, sinograms: Tensor) -> Tensor:
        """Filtered back-projection: the ramp (Ram-Lak) filter along the detector, then ``Aᵀ``."""
        n = self.size
        padded = 2 ** math.ceil(math.log2(2 * n))
        # Ram-Lak filter built in the spatial domain (no DC offset; Kak & Slaney, ch. 3).
        kernel = torch.zeros(padded, dtype=torch.float64, device=sinograms.device)
        kernel[0] = 0.25
        odd = torch.arange(1, padded // 2, 2, device=sinograms.device)
        kernel[odd] = kernel[-odd] = -1 / (math.pi * odd.double()) ** 2
        ramp = 2 * torch.fft.fft(kernel).real
        spectrum = torch.fft.fft(sinograms.double(), n=padded, dim=-1) * ramp
        filtered = torch.fft.ifft(spectrum, dim=-1).real[..., :n]
        return self.adjoint(filtered.to(self.dtype)) * (math.pi / (2 * self.n_angles))
