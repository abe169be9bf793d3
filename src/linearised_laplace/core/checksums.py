"""SHA-256 fingerprints of tensors: for files' integrity checks and for checkpoints' fingerprints."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def checksum(tensor: Tensor) -> str:
    """SHA-256 (hex) of a CPU tensor's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def digest(tensors: dict[str, Tensor]) -> str:
    """One SHA-256 over named tensors (names, dtypes, shapes and values; on any device)."""
    combined = hashlib.sha256()
    for name, tensor in tensors.items():
        combined.update(f"{name}:{checksum(tensor.detach().cpu())};".encode())
    return combined.hexdigest()
