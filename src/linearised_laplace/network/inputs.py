"""Network inputs and outputs as the PyTorch and Hugging Face ecosystems have them.

Inputs ``x`` are a tensor ``[N, ...]`` (the model is called ``model(x)``), a tuple of tensors
(``model(*x)``) or a mapping of names to tensors (``model(**x)``); every leaf has the batch
first, ``N`` rows. :func:`as_tree` normalises a user's inputs to a plain ``Tensor``, ``tuple`` or
``dict`` (a ``list`` becomes a tuple; a ``BatchEncoding`` or any other ``Mapping`` a dict; numpy
leaves tensors), without copying or changing a tensor; every other function here takes that
normal form. Outputs (:func:`logits`) are a tensor, a tuple or list (its first element), a mapping
(its ``"logits"``, else its first value) or an object with a ``logits`` attribute (a
``transformers`` ``ModelOutput``). A batch of data (:func:`split_batch`) is an ``(x, y)`` pair or a
Hugging Face mapping that carries the targets under ``"labels"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

Inputs = Tensor | tuple[Tensor, ...] | dict[str, Tensor]
LABELS = "labels"
"""The key of the targets in a Hugging Face batch; it is not passed to the model."""


class OutputTypeError(TypeError):
    """A model returned something :func:`logits` cannot read the outputs from."""


_ACCEPTED = (
    "a Tensor [N, ...] (or a numpy array), a tuple or list of them (the model is called "
    "model(*x)), or a dict / Mapping of them (model(**x))"
)


def as_tree(x: object, name: str = "x") -> Inputs:
    """``x`` in normal form: a ``Tensor``, a ``tuple`` or a ``dict`` of tensors (none copied).

    ``name`` names the inputs in errors (an argument, or e.g. "the train_loader's inputs").
    """
    if isinstance(x, Tensor | np.ndarray):
        return _tensor(x)
    if isinstance(x, Mapping):
        items = dict(x)
    elif isinstance(x, tuple | list):
        items = dict(enumerate(x))
    else:
        raise TypeError(f"{_what(name)} must be {_ACCEPTED}; got {type(x).__name__}.")
    bad = {k: type(t).__name__ for k, t in items.items() if not isinstance(t, Tensor | np.ndarray)}
    if bad or not items:
        held = f"holding {bad} (drop entries that are not tensors)" if bad else "that is empty"
        raise TypeError(f"{_what(name)} must be {_ACCEPTED}; got a {type(x).__name__} {held}.")
    if isinstance(x, Mapping):
        if not all(isinstance(k, str) for k in items):
            raise TypeError(
                f"The keys of {_what(name)} name the model's keyword arguments and must be "
                f"strings; got {list(items)}."
            )
        return {k: _tensor(t) for k, t in items.items()}
    return tuple(_tensor(t) for t in items.values())


def leaves(x: Inputs) -> list[Tensor]:
    """The tensors of ``x``, in order."""
    if isinstance(x, Tensor):
        return [x]
    return list(x.values() if isinstance(x, dict) else x)


def named_leaves(x: Inputs, name: str = "x") -> dict[str, Tensor]:
    """The tensors of ``x`` by name: ``name`` for a tensor, ``name.0`` or ``name.key`` in a tree."""
    if isinstance(x, Tensor):
        return {name: x}
    items = x.items() if isinstance(x, dict) else enumerate(x)
    return {f"{name}.{key}": t for key, t in items}


def leaf_names(x: Inputs, name: str = "x") -> list[str]:
    """How errors name each tensor of ``x``, e.g. "`x`", "`x`[0]" or "`x`['input_ids']"."""
    what = _what(name)
    if isinstance(x, Tensor):
        return [what]
    keys = [repr(k) for k in x] if isinstance(x, dict) else range(len(x))
    return [f"{what}[{k}]" for k in keys]


def map_leaves(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    """``x`` with ``fn`` applied to every tensor."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {key: fn(t) for key, t in x.items()}
    return tuple(fn(t) for t in x)


def batch_size(x: Inputs) -> int:
    """``N``, the rows of the first tensor (:func:`as_inputs` checks that all agree)."""
    return leaves(x)[0].shape[0]


def take(x: Inputs, index: object) -> Inputs:
    """Rows ``index`` (an index tensor, a slice, an int, ``None``) of every tensor of ``x``."""
    return map_leaves(lambda t: t[index], x)


def split(x: Inputs, chunk: int) -> list[Inputs]:
    """``x`` in consecutive chunks of ``chunk`` rows (views)."""
    n = batch_size(x)
    return [take(x, slice(start, start + chunk)) for start in range(0, n, chunk)] or [x]


def to(x: Inputs, device: torch.device) -> Inputs:
    """``x`` on ``device`` (tensors already there are returned as they are)."""
    return map_leaves(lambda t: t.to(device), x)


def arguments(x: Inputs) -> tuple[tuple, dict[str, Tensor]]:
    """The positional and keyword arguments the model is called with: ``x``, ``*x`` or ``**x``."""
    if isinstance(x, Tensor):
        return (x,), {}
    if isinstance(x, dict):
        return (), x
    return x, {}


def describe(x: Inputs) -> str:
    """Shapes and dtypes, e.g. ``[8, 3] torch.float64`` or ``{'input_ids': [8, 5] torch.int64}``."""
    if isinstance(x, Tensor):
        return f"{list(x.shape)} {x.dtype}"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {describe(t)}" for k, t in x.items()) + "}"
    return "(" + ", ".join(describe(t) for t in x) + ")"


def as_inputs(x: object, dtype: torch.dtype, name: str = "x") -> Inputs:
    """Network inputs in normal form (:func:`as_tree`), checked.

    Every tensor must be batched with the same ``N`` rows, and a floating one must have the
    network's ``dtype``. ``name`` names the inputs in errors.
    """
    x = as_tree(x, name)
    labelled = list(zip(leaf_names(x, name), leaves(x), strict=True))
    for label, t in labelled:
        if t.ndim == 0:
            raise ValueError(
                f"{label} must be batched, [N, ...] with one row per example; got a 0-d tensor. "
                "Reshape one example with one feature to [1, 1]."
            )
        if t.is_floating_point() and t.dtype != dtype:
            raise TypeError(
                f"{label} are {t.dtype} but the network's parameters are {dtype}: convert the "
                f"inputs with .to({dtype}) (or convert the network before building the method)."
            )
    rows = {label: t.shape[0] for label, t in labelled}
    if len(set(rows.values())) > 1:
        raise ValueError(
            f"Every tensor of {_what(name)} must have the batch first, the same N rows; got "
            f"{rows}. Pass per-example tensors only (a tensor shared by all examples belongs in "
            "the model)."
        )
    return x


def split_batch(batch: object) -> tuple[Inputs, Tensor]:
    """A collated batch as ``(x, y)``: an ``(x, y)`` pair, or a mapping with ``"labels"``.

    A Hugging Face batch's ``"labels"`` are the targets; the other entries are the inputs.
    """
    if isinstance(batch, Mapping):
        if LABELS not in batch:
            raise TypeError(
                f"A dict batch must carry its targets under {LABELS!r}, as Hugging Face batches "
                f"do; got the keys {list(batch)}. Rename the targets' key to {LABELS!r} (e.g. "
                "'label' → 'labels'), or return (inputs, target) pairs from the dataset."
            )
        return {k: v for k, v in batch.items() if k != LABELS}, batch[LABELS]
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TypeError(
            f"Each data item must be a pair (x, y) or a dict with {LABELS!r}; the dataset yields "
            f"{type(batch).__name__} batches. Return (input, target) from the dataset's "
            "__getitem__."
        )
    return batch[0], batch[1]


def logits(output: object) -> Tensor:
    """The logits or regression outputs in a model's ``output``.

    ``output`` itself if a tensor; else a tuple's first element, a mapping's ``"logits"`` (else
    its first value), or the ``logits`` attribute of a ``ModelOutput``. Nested outputs are
    unwrapped in turn (e.g. a tuple whose first element is a ``ModelOutput``).
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and output:
        return logits(output["logits"] if "logits" in output else next(iter(output.values())))
    if isinstance(output, tuple | list) and output:
        return logits(output[0])
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    raise OutputTypeError(
        "The model must return a Tensor of shape [N, C], a tuple or dict whose first element "
        f"(or 'logits') is one, or an object with .logits; got {type(output).__name__}. Wrap the "
        "model so that its forward returns the logits or regression outputs."
    )


def _tensor(t: Tensor | np.ndarray) -> Tensor:
    return torch.from_numpy(t) if isinstance(t, np.ndarray) else t


def _what(name: str) -> str:
    return f"`{name}`" if name.isidentifier() else name.capitalize()
