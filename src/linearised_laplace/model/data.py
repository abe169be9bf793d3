"""Training data as indexed batches.

The library draws its own batches from the user's dataset, so that each data point has a stable index
(its per-point noise depends on it), passes in a fixed order are reproducible, and shuffling is driven
by the library's seed rather than by global random state. The user's loader is never iterated, but
its sampler is honoured: a loader whose sampler draws a subset (``SubsetRandomSampler``, a custom
sampler or batch sampler) contributes exactly the points it yields, each once, re-indexed
``0..n-1`` in increasing dataset order (:func:`sampled_indices`).
Inputs may be a tensor, a tuple or a dict of tensors (:mod:`linearised_laplace.network.inputs`), and a
dataset may yield Hugging Face dict items whose ``"labels"`` are the targets.
Under ``torch.distributed`` each global batch is split over the ranks
(:mod:`linearised_laplace.core.distributed`); sums over data points are then completed by
:meth:`Data.all_reduce`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

from ..core.checksums import digest
from ..core.distributed import Shard
from ..network import inputs as trees
from ..network.inputs import Inputs

Batch = tuple[Tensor, Inputs, Tensor]  # (indices [b], inputs [b, ...], targets [b, ...])


def sampled_indices(loader: DataLoader) -> list[int] | None:
    """The dataset indices a loader's sampler yields, sorted; ``None`` if it yields every point.

    ``SequentialSampler`` and a ``RandomSampler`` without replacement yield every point once and
    are not iterated (iterating a ``RandomSampler`` would consume the global random state);
    ``SubsetRandomSampler`` gives its ``indices``; any other sampler or batch sampler is iterated
    once. A sampler that yields a point twice (sampling with replacement, weighted sampling) is
    refused: the posterior weights every training point once.
    """
    batch_sampler = loader.batch_sampler
    sampler = batch_sampler.sampler if isinstance(batch_sampler, BatchSampler) else None
    if batch_sampler is None:  # batch_size=None: the sampler yields single items
        sampler = loader.sampler
    if isinstance(loader.dataset, IterableDataset):
        return None  # refused by Data with its own message
    n = len(loader.dataset)
    if isinstance(sampler, SequentialSampler) or (
        isinstance(sampler, RandomSampler) and not sampler.replacement and sampler.num_samples == n
    ):
        return None
    if isinstance(sampler, SubsetRandomSampler):
        drawn = [int(i) for i in sampler.indices]
    elif sampler is not None:
        drawn = [int(i) for i in sampler]
    else:
        drawn = [int(i) for batch in batch_sampler for i in batch]
    unique = sorted(set(drawn))
    if len(unique) < len(drawn):
        raise ValueError(
            f"The loader's sampler ({type(sampler or batch_sampler).__name__}) yields "
            f"{len(drawn) - len(unique)} repeated index(es), e.g. sampling with replacement; the "
            "posterior counts every training point once. Pass a Subset of the dataset, or a "
            "sampler without replacement."
        )
    if unique and (unique[0] < 0 or unique[-1] >= n):
        raise ValueError(
            f"The loader's sampler yields indices outside the dataset's 0..{n - 1} "
            f"(from {unique[0]} to {unique[-1]}). Fix the sampler's indices."
        )
    return unique


class InputsDataset(Dataset):
    """Inputs ``x`` (a tensor, a tuple or a dict of tensors, ``N`` rows each) and targets ``y``."""

    def __init__(self, x: Inputs, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index: int) -> tuple[Inputs, Tensor]:
        return trees.take(self.x, index), self.y[index]


TrainingData = DataLoader | tuple[Inputs, Tensor]
"""What the methods take as data: a ``DataLoader`` or a pair ``(x, y)``."""


class Data:
    """A map-style dataset of ``(x, y)`` pairs, iterated in batches with their indices.

    Args:
        source: A ``DataLoader`` (its dataset, batch size, collate function and the points its
            sampler yields are used), a map-style ``Dataset`` yielding ``(x, y)`` or Hugging
            Face dicts with ``"labels"``, or a pair ``(X, Y)`` of inputs (a tensor, a tuple or a
            dict of tensors) and a target tensor, all with ``N`` rows.
        batch_size: Batch size; defaults to the loader's, else 128. Under ``torch.distributed``
            this is the global batch, split over the ranks.

    Attributes:
        shard: This process's rank and the number of ranks that share each batch.
    """

    def __init__(
        self, source: DataLoader | Dataset | tuple[Tensor, Tensor], batch_size: int | None = None
    ):
        collate = None
        if isinstance(source, DataLoader):
            if isinstance(source.sampler, DistributedSampler):
                raise ValueError(
                    "The loader uses a DistributedSampler, but the library shards the data over "
                    "the ranks itself (by data index, so the per-point noise stays the same). Remove "
                    "the DistributedSampler and pass the full dataset on every rank."
                )
            collate = source.collate_fn
            batch_size = (
                batch_size or source.batch_size or getattr(source.batch_sampler, "batch_size", None)
            )
            indices = sampled_indices(source)
            source = source.dataset if indices is None else Subset(source.dataset, indices)
        elif isinstance(source, tuple) and len(source) == 2:
            x, y = source
            if not (isinstance(x, Tensor | tuple | list | Mapping) and isinstance(y, Tensor)):
                raise TypeError(
                    "A data tuple must hold two tensors (X, Y), or inputs X as a tuple or dict of "
                    f"tensors and targets Y a tensor; got ({type(x).__name__}, {type(y).__name__})."
                )
            x = trees.as_tree(x, "X")
            rows = {t.shape[0] if t.ndim else None for t in trees.leaves(x)}
            if rows != {y.shape[0] if y.ndim else None}:
                got = x.shape[0] if isinstance(x, Tensor) and x.ndim else trees.describe(x)
                raise ValueError(
                    f"X and Y must have the same number of rows, got {got} and "
                    f"{y.shape[0] if y.ndim else 'a 0-d Y'}."
                )
            source = TensorDataset(x, y) if isinstance(x, Tensor) else InputsDataset(x, y)
        if isinstance(source, IterableDataset) or not isinstance(source, Dataset):
            raise TypeError(
                "Training data must be a DataLoader over a map-style Dataset, a Dataset, or a pair "
                f"of tensors (X, Y); got {type(source).__name__}. Iterable datasets cannot be "
                "indexed per data point; wrap the data in a TensorDataset."
            )
        try:
            n = len(source)
        except TypeError as err:
            raise TypeError("The training dataset must define __len__.") from err
        if n == 0:
            raise ValueError(
                "The training data are empty (0 data points); pass a non-empty loader."
            )
        self.dataset = source
        self._subset_index = torch.as_tensor(source.indices) if isinstance(source, Subset) else None
        self.n = n
        self.batch_size = int(batch_size or 128)
        self._collate = collate
        self._fingerprint: dict | None = None
        self.shard = Shard.current()
        if self.batch_size < self.shard.world:
            raise ValueError(
                f"The global batch size ({self.batch_size}) is smaller than the number of ranks "
                f"({self.shard.world}): some ranks would never see data. Use a batch size of at "
                f"least {self.shard.world} (it is split over the ranks)."
            )

    def __len__(self) -> int:
        return self.n

    @property
    def n_batches(self) -> int:
        """Batches in one pass of :meth:`batches` at the data's batch size."""
        return -(-self.n // self.batch_size)

    def batches(
        self, order: Tensor | None = None, batch_size: int | None = None
    ) -> Iterator[Batch]:
        """Yield ``(indices, x, y)`` over ``order`` (default: ``0..n-1``) in consecutive batches.

        Under ``torch.distributed`` each batch is this rank's share of the global batch.
        """
        for _, batch in self.sharded_batches(order, batch_size):
            yield batch

    def sharded_batches(
        self, order: Tensor | None = None, batch_size: int | None = None
    ) -> Iterator[tuple[int, Batch]]:
        """Yield ``(b, (indices, x, y))``: each global batch's size ``b`` and this rank's share.

        A stochastic gradient scales this rank's share by ``n / b`` before it is all-reduced.
        """
        order = torch.arange(self.n) if order is None else order.reshape(-1).long()
        for batch in order.split(batch_size or self.batch_size):
            idx = self.shard.local(batch)
            yield batch.numel(), (idx, *self._fetch(idx))

    def fingerprint(self, n_points: int = 256) -> dict:
        """What identifies the data in a checkpoint.

        ``n``, the batch size and a SHA-256 of up to ``n_points`` evenly spaced points' inputs
        and targets (for :meth:`indexed` data: those of the data they index).
        """
        if self._fingerprint is not None:
            return self._fingerprint
        idx = torch.linspace(0, self.n - 1, min(n_points, self.n)).round().long().unique()
        x, y = self._fetch(idx)
        points = digest({**trees.named_leaves(x, "x"), "y": y})
        return {"n": self.n, "batch_size": self.batch_size, "points": points}

    def indexed(self, targets: Tensor) -> Data:
        """These data with each input replaced by its index ``i`` (for a held feature matrix).

        ``targets`` ``[n, ...]`` are this data's targets in order. The batch size and the
        :meth:`fingerprint` (of the real inputs) are kept.
        """
        data = Data((torch.arange(self.n), targets), batch_size=self.batch_size)
        data._fingerprint = self.fingerprint()
        return data

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Complete a sum over data points by summing ``tensor`` over the ranks (in place)."""
        return self.shard.all_reduce(tensor)

    def random_order(self, generator: torch.Generator) -> Tensor:
        """A random permutation of the data indices."""
        return torch.randperm(self.n, generator=generator)

    def loader(self, indices: Tensor) -> DataLoader:
        """A loader over the points at ``indices``, batched and collated as these data are."""
        subset = Subset(self.dataset, indices.tolist())
        return DataLoader(subset, batch_size=self.batch_size, collate_fn=self._collate)

    def subset(self, indices: Tensor) -> tuple[Inputs, Tensor]:
        """Inputs and targets of the given data points."""
        return self._fetch(indices.reshape(-1).long())

    def _fetch(self, idx: Tensor) -> tuple[Inputs, Tensor]:
        dataset = self.dataset
        if isinstance(dataset, Subset):
            idx, dataset = self._subset_index[idx], dataset.dataset
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            x, y = dataset.tensors
            return x[idx], y[idx]
        if isinstance(dataset, InputsDataset):
            return trees.take(dataset.x, idx), dataset.y[idx]
        collate = self._collate or torch.utils.data.default_collate
        x, y = trees.split_batch(collate([dataset[i] for i in idx.tolist()]))
        return trees.as_tree(x, "the training inputs"), y
