"""Validation at the library boundary: each error says what was expected, what arrived, and the fix."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def check_positive(name: str, value: float | Sequence[float] | Tensor) -> Tensor:
    """Return ``value`` as a float64 tensor, raising if any entry is not finite and > 0."""
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1).clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"`{name}` must be a positive number or a sequence of them, got {value!r}."
        ) from err
    if tensor.numel() == 0 or not bool(torch.all(torch.isfinite(tensor) & (tensor > 0))):
        raise ValueError(
            f"`{name}` must be finite and > 0, got {tensor.tolist()}. "
            f"Pass a positive value, e.g. {name}=1.0."
        )
    return tensor


def as_int(value: object) -> int | None:
    """``value`` as a Python ``int`` if it is an integer scalar, else ``None``.

    Python, numpy and 0-d integer torch scalars count; bools do not.
    """
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, Tensor):
        integral = value.ndim == 0 and not (value.is_floating_point() or value.is_complex())
        return int(value) if integral and value.dtype != torch.bool else None
    try:
        return operator.index(value)
    except TypeError:
        return None


def plain_int(value: object) -> object:
    """An integer scalar (numpy, torch) as a Python ``int``; anything else unchanged."""
    number = as_int(value)
    return value if number is None else number


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1 (numpy and torch ones included)."""
    number = as_int(value)
    if number is None or number < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return number


def check_seed(seed: object) -> int:
    """Return ``seed`` as an ``int``; every random draw of a method is derived from it."""
    number = as_int(seed)
    if number is None:
        raise TypeError(
            f"`seed` must be an integer, got {seed!r}. Every random draw is derived from it, so "
            "equal seeds give equal results; pass e.g. seed=0."
        )
    return number


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise if a floating tensor holds NaN or inf."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} contain {bad} non-finite value(s) (NaN or inf). Clean or impute them first."
        )


def check_output(output: Tensor, n_inputs: int) -> Tensor:
    """Check that a network's outputs (:func:`~linearised_laplace.network.inputs.logits`) are ``[N, C]``."""
    if output.ndim != 2 or output.shape[0] != n_inputs:
        raise ValueError(
            f"The model must return outputs of shape [N, C] = [{n_inputs}, C], "
            f"got {list(output.shape)}. For a single regression output use shape [N, 1] "
            "(e.g. end the network with nn.Linear(h, 1))."
        )
    return output


def check_sample_budget(n_floats: int, what: str, fix: str, limit_gib: float = 16.0) -> None:
    """Raise before allocating ``n_floats`` float64 numbers if they exceed ``limit_gib``."""
    gib = n_floats * 8 / 2**30
    if gib > limit_gib:
        raise MemoryError(
            f"{what} needs {gib:.1f} GiB (float64), more than the {limit_gib:g} GiB allowed. {fix}"
        )


def check_memory_gib(name: str, value: object, positive: bool = False) -> float | None:
    """A memory limit in GiB: ``None`` (the default), or a number ≥ 0 (``> 0`` if ``positive``)."""
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    if not number or (positive and value == 0):
        expected = "a number > 0" if positive else "a number ≥ 0 (0: never hold the features)"
        raise ValueError(f"`{name}` must be {expected} or None (the default), got {value!r}.")
    return float(value)
