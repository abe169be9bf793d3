r"""Data parallelism over ``torch.distributed``: every rank holds the model, a share of each batch.

When a process group is initialised (``torchrun``, gloo on CPU or NCCL on GPU), the library shards
the data itself: each global batch (the loader's batch size) is split into ``world`` near-equal
contiguous parts, rank ``r`` computes the JVPs/VJPs of part ``r``, and every sum over data points
(stochastic gradients, the noise pass, curvature products, ``γ̂``, the mean's gradient) is
all-reduced. All ranks then take the same steps from the same seed and hold the same samples and
``α`` — equal, up to the order of floating-point sums, to one process with the same global batch.
The per-point noise is keyed by the data index (:mod:`linearised_laplace.model.noise`), so it does not
depend on the sharding either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .seeds import derive_seed


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class Shard:
    """This process's place in the data-parallel group.

    Attributes:
        rank: This process's rank.
        world: Number of processes (1: no parallelism, every method is a no-op).
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        """The default process group's rank and size, or a single process when none exists."""
        if _initialised():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def local(self, indices: Tensor) -> Tensor:
        """This rank's contiguous share of a global batch of ``indices`` ``[b]`` (may be empty)."""
        return indices if self.world == 1 else indices.tensor_split(self.world)[self.rank]

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it.

        A non-contiguous tensor (an ``einsum`` may return a transposed view) is reduced through a
        contiguous copy: gloo would reduce a copy of it and leave the tensor as it was.
        """
        if self.world > 1:
            if tensor.is_contiguous():
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            else:
                dense = tensor.contiguous()
                dist.all_reduce(dense, op=dist.ReduceOp.SUM)
                tensor.copy_(dense)
        return tensor

    def check_agree(self, **values: object) -> None:
        """Raise ``ValueError`` on every rank if the ranks hold different ``values``.

        Each value is hashed (its JSON form) to one integer, and the integers are all-gathered.
        """
        if self.world == 1:
            return
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        local = torch.tensor(
            [derive_seed(json.dumps(v, sort_keys=True, default=str)) for v in values.values()],
            dtype=torch.int64,
            device=device,
        )
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered).cpu()
        for column, name in enumerate(values):
            differ = (table[:, column] != table[0, column]).nonzero().flatten().tolist()
            if differ:
                raise ValueError(
                    f"The {self.world} ranks disagree on {name}: ranks {differ} differ from rank 0. "
                    "Every rank must build the same model, pass the same seed and the same "
                    "(unsharded) training data; the library shards the data itself."
                )


def is_main_process() -> bool:
    """True on rank 0 (and without a process group): the process that writes files and bars."""
    return Shard.current().rank == 0
