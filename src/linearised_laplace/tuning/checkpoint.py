"""EM checkpoints: the state after every step, resumed only by the same run.

The same run means the same network, weights, data and settings (:func:`run_fingerprint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..core import persistence
from .state import EMState


def run_fingerprint(snapshot: dict[str, Tensor], data, **settings) -> dict:
    """What identifies an EM run besides its start: the network, its weights, the data, settings."""
    return {
        "model": persistence.model_signature(snapshot),
        "weights": persistence.digest(snapshot),
        "data": data.fingerprint(),
        **settings,
    }


CHECKPOINT_KIND = "em-checkpoint"
FINGERPRINT_NAMES = {"weights": "the network's weights", "data": "the training data"}
"""How a mismatch in a fingerprint's entries is named (others by their key)."""


def save_checkpoint(path: str | Path, state: EMState, fingerprint: dict) -> None:
    """Atomically write ``state`` with the run's ``fingerprint``."""
    tensors = {"precision": state.precision, "mean": state.mean}
    if state.samples is not None:
        tensors["samples"] = state.samples
    meta = {
        "kind": CHECKPOINT_KIND,
        "fingerprint": fingerprint,
        "step": state.step,
        "sigma": state.sigma,
        "history": state.history,
        "converged": state.converged,
    }
    persistence.write(path, tensors, meta)


def load_checkpoint(
    path: str | Path, fingerprint: dict, dtype: torch.dtype, device: torch.device
) -> EMState:
    """The state saved in ``path``.

    Raises ``ValueError`` naming what differs if it was written by a run with another fingerprint
    (other weights, data or settings).
    """
    tensors, meta = persistence.read(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"{path} is not an EM checkpoint (it holds a {meta.get('kind')!r}); pass another "
            "`checkpoint` path."
        )
    persistence.check_fields(
        meta,
        {"fingerprint": dict, "step": int, "sigma": float, "history": list, "converged": bool},
        path,
    )
    saved = meta["fingerprint"]
    if "model" in saved and "model" in fingerprint:
        persistence.check_signature(saved["model"], fingerprint["model"], path)
    differs = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differs:
        raise ValueError(
            f"{path} was written by another EM run: it differs in "
            f"{', '.join(FINGERPRINT_NAMES.get(k, k) for k in differs)}. Resume with the same "
            "network, data and arguments, or pass another `checkpoint` path (or delete the file)."
        )
    samples = tensors.get("samples")
    return EMState(
        meta["step"],
        tensors["precision"],
        meta["sigma"],
        tensors["mean"].to(dtype=dtype, device=device),
        None if samples is None else samples.to(dtype=dtype, device=device),
        meta["history"],
        meta["converged"],
    )
