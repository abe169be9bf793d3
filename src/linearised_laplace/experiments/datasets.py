"""Offline image data sets: scikit-learn's digits, Fashion-MNIST from Debian's IDX files, and shifts.

Nothing is downloaded. Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``; files under ``/usr/share/datasets/fashion-mnist``).
Images are float32 in ``[0, 1]`` with shape ``[N, 1, H, W]``; labels are int64 ``[N]``.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class ImageData:
    """Train, validation and test splits of an image classification data set."""

    name: str
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: int = 10

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(channels, height, width)``."""
        return tuple(self.train[0].shape[1:])

    def to(self, device: torch.device | str) -> ImageData:
        """A copy with every split on ``device``."""
        splits = {
            k: tuple(t.to(device) for t in getattr(self, k)) for k in ("train", "val", "test")
        }
        return replace(self, **splits)


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (optionally gzip-compressed), as used by (Fashion-)MNIST.

    The format: two zero bytes, a type code, the number of dimensions ``k``, then ``k`` big-endian
    uint32 sizes and the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path} is truncated or corrupted: the header promises {expected} bytes of data for "
            f"shape {list(shape)}, the file holds {len(raw) - header}."
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("=")).copy())


def _split(x: Tensor, y: Tensor, n_val: int, seed: int) -> tuple[tuple, tuple]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def digits(n_test: int = 597, n_val: int = 200, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8×8 digits (1,797 images), split into train, validation and test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, rest = perm[:n_test], perm[n_test:]
    train, val = _split(x[rest], y[rest], n_val, seed + 1)
    return ImageData("digits", train, val, (x[test], y[test]))


def fashion_mnist(
    root: str | Path | None = None, n_train: int | None = None, n_val: int = 5000, seed: int = 0
) -> ImageData:
    """Fashion-MNIST (28×28) from the IDX files of Debian's ``dataset-fashion-mnist``.

    Args:
        root: Folder holding the four ``*-ubyte.gz`` files (default: ``$LLA_FASHION_MNIST``, else
            Debian's ``/usr/share/datasets/fashion-mnist``).
        n_train: Keep a seeded random subset of this many training images (default: all but the
            validation images).
        n_val: Validation images held out of the 60,000 training images.
        seed: Seeds the split and the subset.
    """
    root = Path(root or os.environ.get("LLA_FASHION_MNIST", FASHION_MNIST))
    missing = [f for files in FASHION_FILES.values() for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is missing from {root} ({', '.join(missing)}). Install it with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
            "LLA_FASHION_MNIST to a folder holding the IDX files."
        )
    parts = {}
    for split, (images, labels) in FASHION_FILES.items():
        x = read_idx(root / images).float().div_(255).unsqueeze(1)
        parts[split] = (x, read_idx(root / labels).long())
    train, val = _split(*parts["train"], n_val, seed)
    if n_train is not None:
        keep = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(seed + 1))
        train = (train[0][keep[:n_train]], train[1][keep[:n_train]])
    return ImageData("fashion-mnist", train, val, parts["test"])


def rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate images ``[N, C, H, W]`` about their centre (bilinear, zero padding)."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype)
    grid = torch.nn.functional.affine_grid(
        theta.expand(len(images), 2, 3), list(images.shape), align_corners=False
    )
    return torch.nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def resize(images: Tensor, size: int) -> Tensor:
    """Resize images ``[N, C, H, W]`` to ``size × size`` (area averaging down, bilinear up)."""
    mode = "area" if size < images.shape[-1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(images, size=(size, size), mode=mode, **kwargs)


def out_of_distribution(data: ImageData, n: int | None = None) -> Tensor:
    """Inputs from another domain, at ``data``'s image size.

    Digits are paired with Fashion-MNIST clothes (when the Debian package is installed; otherwise
    with uniform noise images) and Fashion-MNIST with scikit-learn's digits, each resized.
    """
    size, n = data.image_shape[-1], n or len(data.test[0])
    if data.name == "fashion-mnist":
        other = digits(n_val=0).test[0]
    else:
        try:
            other = fashion_mnist(n_val=0).test[0]
        except FileNotFoundError:
            gen = torch.Generator().manual_seed(0)
            return torch.rand(n, *data.image_shape, generator=gen)
    other = resize(other, size)
    other = other / other.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return other[:n]
