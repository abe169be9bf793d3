import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)

from linearised_laplace import Data
from linearised_laplace.core.checksums import digest


class _Pairs(Dataset):
    def __init__(self, n):
        self.x, self.y = torch.randn(n, 2), torch.arange(n)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_loader_dataset_and_tensors_give_the_same_indexed_batches():
    dataset = _Pairs(10)
    loader = DataLoader(dataset, batch_size=4, shuffle=True)
    for data in (
        Data(loader),
        Data(dataset, batch_size=4),
        Data((dataset.x, dataset.y), batch_size=4),
    ):
        batches = list(data.batches())
        assert [len(idx) for idx, _, _ in batches] == [4, 4, 2]
        for idx, x, y in batches:
            assert torch.equal(y, idx) and torch.equal(x, dataset.x[idx])
    assert Data(loader).batch_size == 4


def test_random_order_is_a_seeded_permutation():
    data = Data((torch.randn(9, 1), torch.zeros(9)))
    a = data.random_order(torch.Generator().manual_seed(3))
    b = data.random_order(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(9))


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(2), 0


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ((torch.zeros(0, 2), torch.zeros(0)), ValueError, "training data are empty"),
        (DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0))), ValueError, "empty"),
        (DataLoader(_Stream()), TypeError, "Iterable datasets cannot be indexed"),
        ([1, 2, 3], TypeError, "got list"),
        ((torch.zeros(3, 2), torch.zeros(4)), ValueError, "same number of rows, got 3 and 4"),
        ((torch.zeros(3, 2), [0, 1, 2]), TypeError, "two tensors"),
    ],
)
def test_bad_sources_raise(source, error, match):
    with pytest.raises(error, match=match):
        Data(source)


def test_items_that_are_not_pairs_raise():
    class Triples(_Pairs):
        def __getitem__(self, i):
            return self.x[i], self.y[i], self.y[i]

    with pytest.raises(TypeError, match=r"must be a pair \(x, y\)"):
        next(Data(Triples(3)).batches())


def _loader(**kw):
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    return DataLoader(TensorDataset(x, y), batch_size=4, **kw)


@pytest.mark.parametrize(
    "sampler, expected",
    [
        (SubsetRandomSampler([7, 1, 4]), [1, 4, 7]),
        (SequentialSampler(range(10)), list(range(10))),
        (RandomSampler(range(10)), list(range(10))),
        ([3, 9, 0], [0, 3, 9]),  # any iterable of indices
    ],
)
def test_the_loaders_sampler_is_honoured(sampler, expected):
    state = torch.random.get_rng_state()
    data = Data(_loader(sampler=sampler))
    assert torch.equal(torch.random.get_rng_state(), state)  # no global random state consumed
    x, y = data.subset(torch.arange(len(data)))
    assert y.tolist() == expected
    assert torch.equal(x[:, 0], 2.0 * torch.tensor(expected, dtype=x.dtype))


def test_a_batch_sampler_is_honoured():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_sampler=[[5, 2], [8]])
    data = Data(loader)
    assert data.subset(torch.arange(len(data)))[1].tolist() == [2, 5, 8]


def test_a_sampler_with_replacement_is_refused():
    sampler = RandomSampler(range(10), replacement=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="repeated index"):
        Data(_loader(sampler=sampler))


class _TupleItems(Dataset):
    """Items ``((a, b), y)``: the default collate makes the inputs a list."""

    def __init__(self, n):
        self.a, self.b, self.y = torch.randn(n, 2), torch.randn(n, 3), torch.arange(n)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.a[i], self.b[i]), self.y[i]


def test_tuple_and_dict_inputs_are_indexed_per_tensor():
    items = _TupleItems(7)
    pairs = {"a": items.a, "b": items.b}
    for data, form in (
        (Data(items, batch_size=3), tuple),
        (Data(((items.a, items.b), items.y), batch_size=3), tuple),
        (Data(([items.a, items.b], items.y), batch_size=3), tuple),
        (Data((pairs, items.y), batch_size=3), dict),
    ):
        batches = list(data.batches(torch.tensor([6, 0, 3, 1])))
        assert [len(idx) for idx, _, _ in batches] == [3, 1]
        for idx, x, y in batches:
            assert isinstance(x, form) and torch.equal(y, idx)
            a, b = x.values() if form is dict else x
            assert torch.equal(a, items.a[idx]) and torch.equal(b, items.b[idx])
        assert data.fingerprint() == data.fingerprint()
    assert Data((pairs, items.y)).fingerprint() != Data((items.a, items.y)).fingerprint()


def test_tensor_inputs_keep_their_fingerprint():
    x, y = torch.arange(6.0).reshape(3, 2), torch.arange(3)
    assert Data((x, y)).fingerprint()["points"] == digest({"x": x, "y": y})


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (
            ({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, torch.zeros(3)),
            ValueError,
            "same number",
        ),
        (({"a": torch.zeros(3, 2)}, torch.zeros(4)), ValueError, "same number of rows"),
        (({"a": [1, 2, 3]}, torch.zeros(3)), TypeError, r"X. must be a Tensor.*holding \{'a'"),
        (({}, torch.zeros(3)), TypeError, "empty"),
    ],
)
def test_bad_tree_sources_raise(source, error, match):
    with pytest.raises(error, match=match):
        Data(source)


def test_n_batches_counts_the_batches_of_one_pass():
    x, y = torch.randn(10, 2), torch.randn(10)
    for batch_size in (1, 3, 5, 10, 64):
        data = Data(DataLoader(TensorDataset(x, y), batch_size=batch_size))
        assert data.n_batches == len(list(data.batches()))
