"""Which parameters of a network are linearised, and the flat ``[D]`` view of them.

A selection is a list of parameter tensors (by name, in ``named_parameters`` order) and, optionally, a
subset of their entries. Every vector over the linearised parameters is a flat tensor whose last axis
has length ``D``; :meth:`ParameterSelection.unflatten` and :meth:`ParameterSelection.flatten` convert
to and from the ``{name: tensor}`` dictionaries that ``torch.func`` works with.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


@dataclass(frozen=True)
class ParameterSelection:
    """The linearised parameters of a network.

    Attributes:
        names: Selected parameter tensors, in ``named_parameters`` order.
        shapes: Their shapes.
        indices: Sorted flat positions, within the concatenation of the named tensors, of the selected
            entries; ``None`` selects every entry.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    indices: Tensor | None = None

    @property
    def n_full(self) -> int:
        """Number of entries of the named tensors together."""
        return sum(s.numel() for s in self.shapes)

    @property
    def n_params(self) -> int:
        """``D``, the number of linearised parameters."""
        return self.n_full if self.indices is None else int(self.indices.numel())

    @property
    def group_ids(self) -> Tensor:
        """``[D]`` index of the parameter tensor (prior group) that each coordinate belongs to."""
        sizes = torch.tensor([s.numel() for s in self.shapes])
        ids = torch.repeat_interleave(torch.arange(len(self.names)), sizes)
        return ids if self.indices is None else ids[self.indices]

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split ``[..., D]`` into ``{name: [..., *shape]}`` (unselected entries are zero)."""
        lead = vector.shape[:-1]
        if self.indices is not None:
            full = vector.new_zeros(*lead, self.n_full)
            full[..., self.indices] = vector
            vector = full
        chunks = vector.split([s.numel() for s in self.shapes], dim=-1)
        return {
            name: chunk.reshape(*lead, *shape)
            for name, shape, chunk in zip(self.names, self.shapes, chunks, strict=True)
        }

    def flatten(self, tree: dict[str, Tensor], n_lead: int = 0) -> Tensor:
        """Concatenate ``{name: [*lead, *shape]}`` into ``[*lead, D]`` (``n_lead`` leading axes)."""
        parts = [tree[name].flatten(start_dim=n_lead) for name in self.names]
        vector = torch.cat(parts, dim=-1)
        return vector if self.indices is None else vector[..., self.indices]


ParameterSpec = str | Sequence[str] | Tensor | ParameterSelection


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _norm_parameter_names(model: nn.Module) -> set[str]:
    return {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if isinstance(module, NORM_LAYERS)
        for name, _ in module.named_parameters(recurse=False)
    }


def _last_layer(model: nn.Module, trainable: dict[str, Tensor]) -> list[str]:
    leaves = [
        (module_name, module)
        for module_name, module in model.named_modules()
        if next(module.children(), None) is None
    ]
    for module_name, module in reversed(leaves):
        names = [
            f"{module_name}.{name}" if module_name else name
            for name, _ in module.named_parameters(recurse=False)
        ]
        names = [n for n in names if n in trainable]
        if names:
            return names
    return []


def select_parameters(
    model: nn.Module, parameters: ParameterSpec = "all", *, exclude_norm: bool = False
) -> ParameterSelection:
    """Choose the parameters of ``model`` to linearise.

    Args:
        model: The network. Only parameters with ``requires_grad=True`` are eligible.
        parameters: ``"all"`` (every trainable parameter), ``"last_layer"`` (the parameters of the
            last leaf module, in registration order, that has any), a sequence of parameter names or
            ``fnmatch`` patterns (e.g. ``["*.lora_A", "*.lora_B"]`` for adapters), or an integer
            tensor of flat indices into the concatenation of all trainable parameters, or a
            :class:`ParameterSelection` (e.g. a saved one), checked against the model.
        exclude_norm: Drop the affine parameters of normalisation layers (BatchNorm, LayerNorm,
            GroupNorm, ...), as the reference implementation of sampled linearised Laplace does.

    Returns:
        The selection.

    Raises:
        TypeError: ``model`` is not a module or ``parameters`` has an unsupported type.
        ValueError: A name matches nothing, indices are out of range or repeated, or nothing
            trainable is selected.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    trainable = _trainable(model)
    if exclude_norm:
        norm = _norm_parameter_names(model)
        trainable = {n: p for n, p in trainable.items() if n not in norm}
    indices = None
    if isinstance(parameters, ParameterSelection):
        return _check_selection(trainable, parameters)
    if isinstance(parameters, Tensor):
        names, indices = _select_indices(trainable, parameters)
    elif isinstance(parameters, str) and parameters == "all":
        names = list(trainable)
    elif isinstance(parameters, str) and parameters == "last_layer":
        names = _last_layer(model, trainable)
    elif isinstance(parameters, str):
        raise ValueError(
            f"`parameters` must be 'all', 'last_layer', a list of names, or a tensor of indices; "
            f"got the string {parameters!r}. To select one tensor by name pass [{parameters!r}]."
        )
    elif isinstance(parameters, Sequence):
        names = _select_names(trainable, parameters)
    else:
        raise TypeError(
            "`parameters` must be 'all', 'last_layer', a sequence of names, or an integer tensor, "
            f"got {type(parameters).__name__}."
        )
    if not names:
        raise ValueError(
            "The selection holds no trainable parameters (requires_grad=True). Select other "
            "parameters, or unfreeze the ones to linearise with `p.requires_grad_(True)`."
        )
    shapes = tuple(trainable[n].shape for n in names)
    return ParameterSelection(tuple(names), shapes, indices)


def _check_selection(
    trainable: dict[str, Tensor], selection: ParameterSelection
) -> ParameterSelection:
    for name, shape in zip(selection.names, selection.shapes, strict=True):
        if name not in trainable or trainable[name].shape != shape:
            found = list(trainable[name].shape) if name in trainable else "no trainable tensor"
            raise ValueError(
                f"The parameter selection needs {name} of shape {list(shape)}; the model has {found}."
            )
    return selection


def _select_names(trainable: dict[str, Tensor], patterns: Sequence[str]) -> list[str]:
    chosen = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"The names in `parameters` must be strings, got {type(pattern).__name__}."
            )
        hits = [n for n in trainable if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(list(trainable)[:8])
            raise ValueError(
                f"`parameters`: no trainable parameter matches {pattern!r}. Trainable parameters "
                f"are: {sample}{', ...' if len(trainable) > 8 else ''}."
            )
        chosen.update(hits)
    return [n for n in trainable if n in chosen]


def _select_indices(trainable: dict[str, Tensor], indices: Tensor) -> tuple[list[str], Tensor]:
    if indices.dtype in (torch.bool, torch.uint8) or indices.is_floating_point():
        raise TypeError(
            f"The indices in `parameters` must be an integer tensor, got dtype {indices.dtype}. "
            "Use torch.nonzero(mask).flatten() to turn a mask into indices."
        )
    total = sum(p.numel() for p in trainable.values())
    flat = indices.reshape(-1).long().cpu()
    if flat.numel() == 0:
        raise ValueError(
            "The tensor of indices in `parameters` is empty; select at least one parameter."
        )
    if int(flat.min()) < 0 or int(flat.max()) >= total:
        raise ValueError(
            f"The indices in `parameters` must lie in [0, {total}) (the trainable parameter "
            f"count), got values in [{int(flat.min())}, {int(flat.max())}]."
        )
    flat = flat.sort().values
    if bool((flat[1:] == flat[:-1]).any()):
        raise ValueError("The indices in `parameters` must not repeat; pass torch.unique(indices).")
    sizes = torch.tensor([p.numel() for p in trainable.values()])
    offsets = torch.cumsum(sizes, 0) - sizes
    owner = torch.searchsorted(offsets, flat, right=True) - 1
    keep = torch.unique(owner)
    names = [list(trainable)[i] for i in keep.tolist()]
    # Re-base the indices onto the concatenation of the kept tensors only.
    kept_sizes = sizes[keep]
    new_offsets = torch.cumsum(kept_sizes, 0) - kept_sizes
    position = torch.searchsorted(keep, owner)
    rebased = flat - offsets[owner] + new_offsets[position]
    return names, rebased
