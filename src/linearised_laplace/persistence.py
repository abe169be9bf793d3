"""Safe files: tensors in safetensors, everything else as JSON in its header. Never pickle.

A file is written to a temporary name in the same folder and renamed into place, so a process killed
mid-write leaves the previous file intact. Reading a truncated, corrupted or foreign file raises a
``ValueError`` and never executes anything: safetensors parses a JSON header and raw tensor bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

FORMAT = "linearised-laplace/1"
HEADER_KEY = "linearised_laplace"


def check_writable(path: str | os.PathLike) -> Path:
    """Raise before any long work if ``path`` cannot be written; returns it as a ``Path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory; pass a file path such as {path / 'la.safetensors'}."
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cannot write {path}: the folder {folder} does not exist. Create it first."
        )
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"Cannot write {path}: {err.strerror}. Choose a writable folder."
        ) from err
    return path


def write(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Atomically write ``tensors`` and JSON ``metadata`` to ``path``."""
    path = check_writable(path)
    payload = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    header = {HEADER_KEY: json.dumps({"format": FORMAT, **metadata})}
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(payload, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by :func:`write`; raise ``ValueError`` if it is not a valid one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = json.loads(header[HEADER_KEY])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path} is not a readable linearised-laplace file: it is truncated, corrupted or of "
            f"another kind ({type(err).__name__}: {err}). Re-create it with `.save(...)`."
        ) from err
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} was not written by this version of linearised-laplace ({FORMAT})."
        )
    return tensors, metadata


def model_signature(state: dict[str, Tensor]) -> list[list]:
    """``[name, shape]`` of every tensor of a model state, for compatibility checks."""
    return [[name, list(t.shape)] for name, t in state.items()]


def check_signature(saved: list[list], current: list[list], path: str | os.PathLike) -> None:
    """Raise if a file was written for a model whose tensors differ from ``current``."""
    if saved == current:
        return
    saved_map, current_map = dict(saved), dict(current)
    missing = [n for n in saved_map if n not in current_map]
    extra = [n for n in current_map if n not in saved_map]
    reshaped = [
        f"{n} {saved_map[n]} -> {current_map[n]}"
        for n in saved_map
        if n in current_map and saved_map[n] != current_map[n]
    ]
    details = "; ".join(
        part
        for part in (
            f"missing from the model: {', '.join(missing[:5])}" if missing else "",
            f"not in the file: {', '.join(extra[:5])}" if extra else "",
            f"different shapes: {', '.join(reshaped[:5])}" if reshaped else "",
        )
        if part
    )
    raise ValueError(
        f"{path} was written for a different model ({details or 'tensor order differs'}). "
        "Load it with the architecture it was fitted on, or fit again."
    )
