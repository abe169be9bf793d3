"""Safe files: tensors in safetensors, everything else as JSON in its header. Never pickle.

A file is written to a temporary name in the same folder and renamed into place, so a process killed
mid-write leaves the previous file intact. Reading a truncated, corrupted or foreign file raises a
``ValueError`` and never executes anything: safetensors parses a JSON header and raw tensor bytes.
The header holds a SHA-256 of every tensor (its dtype, shape and bytes), checked at read, so a flipped
bit cannot load silently; a floating tensor with a NaN or an infinity is refused too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from enum import Enum
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .checksums import checksum, digest  # noqa: F401 (digest: re-exported)

FORMAT = "linearised-laplace/2"  # /2: with checksums
HEADER_KEY = "linearised_laplace"
SIGNATURE = "signature"
"""A :func:`check_fields` schema entry: a list of ``[name, shape]`` pairs (see :func:`model_signature`)."""
_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


class Tensors(dict):
    """The tensors of a file by name; a missing one raises a ``ValueError`` naming it and the file."""

    def __init__(self, tensors: dict[str, Tensor], path: Path):
        super().__init__(tensors)
        self.path = path

    def __missing__(self, name: str) -> Tensor:
        raise ValueError(
            f"{self.path} has no tensor {name!r}, which this kind of file holds (it has: "
            f"{', '.join(list(self)[:8])}); it was edited or written by other code. Re-create it."
        )


def check_writable(path: str | os.PathLike, name: str | None = None) -> Path:
    """Raise before any long work if ``path`` cannot be written; returns it as a ``Path``.

    ``name``: the argument that passed ``path``, named in the errors.
    """
    path = Path(path)
    where = f" (`{name}`)" if name else ""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise IsADirectoryError(
            f"{path}{where} is a directory; pass a file path such as {path / 'la.safetensors'}."
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cannot write {path}{where}: the folder {folder} does not exist. Create it first."
        )
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"Cannot write {path}{where}: {err.strerror}. Choose a writable folder."
        ) from err
    return path


def write(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Atomically write ``tensors`` and JSON ``metadata`` to ``path``."""
    path = check_writable(path)
    payload = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    checksums = {name: checksum(t) for name, t in payload.items()}
    header = {HEADER_KEY: json.dumps({"format": FORMAT, **metadata, "checksums": checksums})}
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(payload, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path: str | os.PathLike) -> tuple[Tensors, dict]:
    """Read a file written by :func:`write`; raise ``ValueError`` if it is not a valid one.

    Every tensor must match its checksum and every floating one be finite. The metadata comes back
    without the checksums.
    """
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
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != FORMAT:
        raise ValueError(
            f"{path} has the format {found!r}; this version of linearised-laplace reads {FORMAT!r} "
            "(files with checksums). Re-create it with this version."
        )
    check_tensors(tensors, metadata.pop("checksums", None), path)
    return Tensors(tensors, path), metadata


def check_tensors(tensors: dict[str, Tensor], checksums: object, path: str | os.PathLike) -> None:
    """Raise unless ``tensors`` are exactly those of ``checksums``, unchanged, and finite."""
    if not isinstance(checksums, dict) or set(checksums) != set(tensors):
        raise ValueError(
            f"{path} is damaged: its checksums do not list exactly its tensors (expected one for "
            f"each of {', '.join(sorted(tensors)[:8])}). Re-create the file."
        )
    for name, tensor in tensors.items():
        if checksum(tensor) != checksums[name]:
            raise ValueError(
                f"{path} is damaged: the tensor {name!r} does not match the checksum written with "
                "it (a flipped bit, an edit or a partial copy). Re-create the file."
            )
        if (tensor.is_floating_point() or tensor.is_complex()) and not tensor.isfinite().all():
            bad = int((~tensor.isfinite()).sum())
            raise ValueError(
                f"{path}: the tensor {name!r} holds {bad} NaN or infinite value(s) of "
                f"{tensor.numel()}; it was saved from a diverged fit. Fit again and save that."
            )


def check_fields(meta: dict, schema: dict[str, object], path: str | os.PathLike) -> None:
    """Raise a ``ValueError`` naming the first field of ``meta`` that ``schema`` does not allow.

    ``schema`` maps a field to a type or a tuple of types (``float`` admits integers; ``bool`` is no
    number), a ``frozenset`` of allowed values, or :data:`SIGNATURE`.
    """
    for field, expected in schema.items():
        if field not in meta:
            raise ValueError(
                f"{path} lacks the field {field!r} (expected {_describe(expected)}); it was edited "
                "or written by other code. Re-create the file."
            )
        value = meta[field]
        if not _matches(value, expected):
            raise ValueError(
                f"{path}: the field {field!r} should be {_describe(expected)}, got {_short(value)} "
                f"({type(value).__name__}); the file was edited or written by other code. "
                "Re-create it."
            )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _matches(value: object, expected: object) -> bool:
    if expected == SIGNATURE:
        return isinstance(value, list) and all(
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], list)
            and all(_matches(size, int) for size in pair[1])
            for pair in value
        )
    if isinstance(expected, frozenset):
        return any(type(value) is type(v) and value == v for v in expected)
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types:
        types = (*types, int)
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _describe(expected: object) -> str:
    if expected == SIGNATURE:
        return "a list of [name, shape] pairs"
    if isinstance(expected, frozenset):
        return "one of " + ", ".join(sorted(repr(v) for v in expected))
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_TYPE_NAMES[t] for t in types)


def build_config(spec: object, classes: dict[str, type], field: str, path: str | os.PathLike):
    """The settings dataclass that ``spec`` (``{"name": class name, setting: value, ...}``) saved.

    Raises a ``ValueError`` naming ``field`` for an unknown class or setting, a value of another
    type than the setting's default, or a value the class refuses.
    """
    name = spec.get("name") if isinstance(spec, dict) else None
    if name not in classes:
        raise ValueError(
            f"{path}: the field {field!r} should be {{'name': N, setting: value, ...}} with N one "
            f"of {', '.join(repr(n) for n in classes)}, got {_short(spec)}. Re-create the file."
        )
    defaults = {f.name: f.default for f in dataclasses.fields(classes[name])}
    settings = {key: value for key, value in spec.items() if key != "name"}
    for key, value in settings.items():
        if key not in defaults:
            raise ValueError(
                f"{path}: {key!r} in the field {field!r} is not a setting of {name}; expected "
                f"some of {', '.join(defaults)}. Re-create the file."
            )
        default = defaults[key]
        default = default.value if isinstance(default, Enum) else default
        if default not in (None, dataclasses.MISSING) and _kind(value) != _kind(default):
            raise ValueError(
                f"{path}: {field}.{key} should be {_kind(default)} like its default {default!r}, "
                f"got {_short(value)}. Re-create the file."
            )
    try:
        return classes[name](**settings)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: the field {field!r} holds settings {name} refuses ({err}). Re-create the file."
        ) from err


def solver_settings(solver: object) -> dict:
    """A JSON-friendly description of a solver configuration (what :func:`build_config` reads)."""
    fields = {
        k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(solver).items()
    }
    return {"name": type(solver).__name__, **fields}


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    return "a number" if isinstance(value, int | float) else _TYPE_NAMES.get(type(value), "other")


def largest_difference(
    saved: dict[str, Tensor], current: dict[str, Tensor]
) -> tuple[str, float] | None:
    """The tensor of ``current`` farthest from ``saved``, and its largest ``|difference|``.

    NaN counts as infinitely far; ``None`` if all are equal. Names and shapes must match.
    """
    gaps = {}
    for name, tensor in saved.items():
        gap = (current[name].detach().cpu().double() - tensor.cpu().double()).abs()
        if gap.numel():
            gaps[name] = float(gap.nan_to_num(nan=math.inf).max())
    name = max(gaps, key=gaps.__getitem__, default=None)
    return None if name is None or gaps[name] == 0 else (name, gaps[name])


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
