import pytest
import torch
from torch import nn

from linearised_laplace.network.parameters import select_parameters

from ..cases import cnn, mlp


def test_all_selects_trainable_parameters_in_order():
    net = mlp()
    net[0].bias.requires_grad_(False)
    sel = select_parameters(net)
    assert sel.names == ("0.weight", "2.weight", "2.bias")
    assert sel.n_params == 15 + 15 + 3


def test_last_layer_and_names_and_patterns():
    net = cnn()
    assert select_parameters(net, "last_layer").names == ("4.weight", "4.bias")
    assert select_parameters(net, ["0.weight"]).names == ("0.weight",)
    assert select_parameters(net, ["*.bias"]).names == ("0.bias", "1.bias", "4.bias")


def test_exclude_norm_drops_normalisation_affine_parameters():
    sel = select_parameters(cnn(), exclude_norm=True)
    assert "1.weight" not in sel.names and "1.bias" not in sel.names
    assert sel.names == ("0.weight", "0.bias", "4.weight", "4.bias")


def test_index_subset_round_trips_through_flatten():
    net = mlp()
    total = sum(p.numel() for p in net.parameters())
    idx = torch.tensor([36, 2, 17, 0])  # spans 0.weight, 0.bias (15..19) and 2.bias (35..37)
    sel = select_parameters(net, idx)
    assert sel.names == ("0.weight", "0.bias", "2.bias")
    full = torch.cat([p.detach().flatten() for p in net.parameters()])
    tree = {n: p.detach() for n, p in net.named_parameters()}
    assert torch.equal(sel.flatten(tree), full[idx.sort().values])
    vec = torch.arange(4.0)
    back = sel.unflatten(vec)
    assert back["0.weight"].flatten()[0] == 0 and back["0.weight"].flatten()[2] == 1
    assert back["0.bias"].flatten()[2] == 2 and back["2.bias"][1] == 3
    assert sum(int((t != 0).sum()) for t in back.values()) == 3  # entry 0 holds the value 0
    assert total == 38


def test_group_ids_follow_parameter_tensors():
    sel = select_parameters(mlp())
    assert sel.group_ids.tolist() == [0] * 15 + [1] * 5 + [2] * 15 + [3] * 3


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (["nope*"], ValueError, "no trainable parameter matches 'nope\\*'"),
        ("first_layer", ValueError, "got the string 'first_layer'"),
        (torch.tensor([0, 0]), ValueError, "must not repeat"),
        (torch.tensor([38]), ValueError, r"must lie in \[0, 38\)"),
        (torch.tensor([-1]), ValueError, r"must lie in \[0, 38\)"),
        (torch.tensor([0.5]), TypeError, "integer tensor"),
        (torch.tensor([], dtype=torch.long), ValueError, "is empty"),
        (3, TypeError, "got int"),
    ],
)
def test_bad_selections_raise(spec, error, match):
    with pytest.raises(error, match=match):
        select_parameters(mlp(), spec)


def test_frozen_model_raises():
    net = mlp()
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="holds no trainable parameters"):
        select_parameters(net)


def test_non_module_raises():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        select_parameters(lambda x: x)


def test_norm_only_model_with_exclude_norm_raises():
    with pytest.raises(ValueError, match="no trainable parameters"):
        select_parameters(nn.Sequential(nn.LayerNorm(3)), exclude_norm=True)
