from collections import UserDict

import numpy as np
import pytest
import torch

from linearised_laplace.network import inputs as trees


def test_as_tree_gives_the_normal_form_without_copying():
    a, b = torch.randn(4, 2), torch.randn(4, 3)
    assert trees.as_tree(a) is a
    tree = trees.as_tree([a, b])
    assert isinstance(tree, tuple) and tree[0] is a and tree[1] is b
    mapping = trees.as_tree(UserDict(input_ids=a, mask=b))  # e.g. a BatchEncoding
    assert (
        type(mapping) is dict
        and mapping["input_ids"] is a
        and list(mapping) == ["input_ids", "mask"]
    )
    converted = trees.as_tree({"a": np.ones((4, 2))})
    assert torch.equal(converted["a"], torch.ones(4, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    "form", [lambda a, b: a, lambda a, b: (a, b), lambda a, b: {"a": a, "b": b}]
)
def test_rows_chunks_and_arguments_act_on_every_tensor(form):
    a, b = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    x = form(a, b)
    assert trees.batch_size(x) == 5
    rows = trees.take(x, torch.tensor([4, 1]))
    assert all(torch.equal(t, s[[4, 1]]) for t, s in zip(trees.leaves(rows), [a, b], strict=False))
    chunks = trees.split(x, 2)
    assert [trees.batch_size(c) for c in chunks] == [2, 2, 1]
    assert trees.to(x, torch.device("cpu")).__class__ is x.__class__
    args, kwargs = trees.arguments(x)  # model(x), model(*x) or model(**x)
    expected = {torch.Tensor: ((x,), {}), tuple: (x, {}), dict: ((), x)}[type(x)]
    assert all(a is e for a, e in zip(args, expected[0], strict=True))
    assert kwargs == expected[1]


def test_names_say_where_each_tensor_is():
    x = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "mask": torch.ones(2, 3)}
    assert trees.leaf_names(x) == ["`x`['input_ids']", "`x`['mask']"]
    assert list(trees.named_leaves(x)) == ["x.input_ids", "x.mask"]
    assert trees.describe(x) == "{'input_ids': [2, 3] torch.int64, 'mask': [2, 3] torch.float64}"


def test_split_batch_takes_the_labels_out():
    ids, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    x, y = trees.split_batch(UserDict(input_ids=ids, labels=labels))
    assert x == {"input_ids": ids} and y is labels
    assert trees.split_batch((ids, labels)) == (ids, labels)


def test_logits_are_read_from_every_output_type():
    f = torch.randn(3, 2)

    class Output:
        logits = f

    for output in (
        f,
        (f, None),
        [f],
        {"loss": None, "logits": f},
        {"scores": f},
        Output(),
        ({"logits": f},),
    ):
        assert trees.logits(output) is f
    for output in (None, (), {}, "logits", {"logits": None}):
        with pytest.raises(trees.OutputTypeError, match="must return a Tensor"):
            trees.logits(output)
