"""KFAC factors of a linearisation's GGN, by curvlinops (Dangel et al.), for the preconditioner.

curvlinops' ``KFACLinearOperator`` (type-2 Fisher: the exact curvature's square-root columns, so
that a network whose GGN is Kronecker-factored is approximated exactly) gives each ``nn.Linear``
and ``nn.Conv2d`` weight and bias its factors; they are read from its ``state_dict`` and placed on
the linearisation's flat coordinates. Other selected tensors (normalisation layers, embeddings, a
subnetwork's scattered entries) are left uncovered, for the caller's diagonal fallback.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..core.kronecker import KroneckerBlock, KroneckerGGN
from . import inputs as trees
from .linearisation import Linearisation

COVERED = (nn.Linear, nn.Conv2d)


class _Outputs(nn.Module):
    """The network with its outputs reduced to the logits or regression outputs ``[N, C]``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return trees.logits(self.net(x))


def network_at(lin: Linearisation) -> nn.Module:
    """A private copy of the network at the linearisation point, in evaluation mode."""
    net = copy.deepcopy(lin.model).eval()
    state = lin.snapshot()
    with torch.no_grad():
        for name, tensor in net.state_dict(keep_vars=True).items():
            if name in state:
                tensor.copy_(state[name])
    return net


def covered_tensors(lin: Linearisation, net: nn.Module) -> list[str]:
    """The selected tensors KFAC covers: whole weights and biases of Linear and Conv2d layers."""
    if lin.selection.indices is not None:
        return []
    names = []
    for name in lin.selection.names:
        module_name, _, leaf = name.rpartition(".")
        module = net.get_submodule(module_name) if module_name else net
        if isinstance(module, COVERED) and leaf in ("weight", "bias"):
            names.append(name)
    return names


def kronecker_ggn(
    lin: Linearisation,
    loss: nn.Module,
    factor: float,
    batches: Iterable[tuple[Tensor, Tensor]],
    n_data: int,
    all_reduce: Callable[[Tensor], Tensor] = lambda t: t,
) -> KroneckerGGN:
    """The KFAC approximation of ``M = Σ_i J_iᵀ B_i J_i`` over the linearised parameters.

    Args:
        lin: The linearisation (its network, selection and point ``θ*``).
        loss: A summed ``CrossEntropyLoss`` or ``MSELoss`` whose GGN is ``M / factor``.
        factor: The scale that turns the loss' GGN into ``M``.
        batches: ``(x, y)`` of the training data (tensor inputs), this rank's share.
        n_data: The training points on all ranks.
        all_reduce: Sums a tensor over the ranks.

    Returns:
        The blocks of the covered tensors; ``uncovered`` names the rest.
    """
    net = network_at(lin)
    names = covered_tensors(lin, net)
    uncovered = tuple(n for n in lin.selection.names if n not in names)
    if not names:
        return KroneckerGGN((), lin.n_params, uncovered)
    from curvlinops import KFACLinearOperator  # an optional dependency: lla[kfac]

    model = _Outputs(net)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [model.net.get_parameter(n).requires_grad_(True) for n in names]
    data = [(x, y.reshape(len(y), -1) if isinstance(loss, nn.MSELoss) else y) for x, y in batches]
    kfac = KFACLinearOperator(
        model,
        loss,
        params,
        data,
        fisher_type="type-2",
        check_deterministic=False,
        separate_weight_and_bias=False,
        num_data=n_data,
    )
    kfac.compute_kronecker_factors()
    state = kfac.state_dict()
    inputs, gradients = state["input_covariances"], state["gradient_covariances"]
    offsets, start = {}, 0
    for name, shape in zip(lin.selection.names, lin.selection.shapes, strict=True):
        offsets[name], start = start, start + shape.numel()
    blocks = []
    for module, leaves in _layers(names).items():
        key = f"net.{module}" if module else "net"
        g = all_reduce(gradients[key].double()) * factor
        a = all_reduce(inputs[key].double()) if "weight" in leaves else None
        first = f"{module}.{leaves[0]}" if module else leaves[0]
        blocks.append(KroneckerBlock.of(offsets[first], g, a, bias=len(leaves) == 2))
    return KroneckerGGN(tuple(blocks), lin.n_params, uncovered)


def _layers(names: list[str]) -> dict[str, list[str]]:
    """The covered tensors by layer: ``{module: ["weight"], ["bias"] or ["weight", "bias"]}``.

    A layer's weight and bias form one block (curvlinops appends the bias to the inputs) when both
    are selected and the bias follows the weight in the flat coordinates.
    """
    layers: dict[str, list[str]] = {}
    for name in names:
        module, _, leaf = name.rpartition(".")
        layers.setdefault(module, []).append(leaf)
    return layers
