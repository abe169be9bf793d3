"""Seeds: every random draw of the library is keyed by a hash of what it is for."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*key: object) -> int:
    """A 63-bit seed from a hash of ``key`` (independent streams for distinct keys)."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``key``."""
    return torch.Generator().manual_seed(derive_seed(*key))
