import pytest
import torch
from torch import nn

import linearised_laplace as lla
from linearised_laplace import reference

from ..cases import classification_data, mlp

QUIET = {"progress": False}


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def test_subnetwork_over_all_parameters_equals_exact():
    net = mlp()
    x, y = classification_data(30)
    d = sum(p.numel() for p in net.parameters())
    kw = {"prior_precision": 2.0, "n_samples": 4, "seed": 1, **QUIET}
    exact = lla.ExactLaplace(net, **kw).fit((x, y))
    x_new = torch.randn(5, 3)
    for sub in (
        lla.SubnetworkLaplace(net, subnetwork=torch.arange(d), **kw),
        lla.SubnetworkLaplace(net, subnetwork="magnitude", n_params=d, **kw),
    ):
        sub.fit((x, y))
        assert _relative(sub.posterior_covariance, exact.posterior_covariance) < 1e-6
        assert _relative(sub.functional_variance(x_new), exact.functional_variance(x_new)) < 1e-6
        assert _relative(sub.posterior_samples, exact.posterior_samples) < 1e-6


def test_subnetwork_equals_the_dense_posterior_restricted_to_its_columns():
    net = mlp()
    x, y = classification_data(30)
    idx = torch.tensor([0, 4, 9, 17, 20, 33, 36])
    sub = lla.SubnetworkLaplace(net, subnetwork=idx, prior_precision=0.7, n_samples=2, **QUIET).fit(
        (x, y)
    )
    jac = reference.jacobian(net, x)[..., idx]
    hess = sub.likelihood.hessian(net(x).detach())
    expected = torch.linalg.inv(reference.posterior_precision(jac, hess, torch.full((7,), 0.7)))
    assert _relative(sub.posterior_covariance, expected) < 1e-10
    x_new = torch.randn(4, 3)
    jac_new = reference.jacobian(net, x_new)[..., idx]
    assert (
        _relative(sub.functional_variance(x_new), jac_new @ expected @ jac_new.transpose(1, 2))
        < 1e-10
    )
    samples = sub.posterior_samples
    assert samples.shape == (2, 7)


def test_last_layer_subnetwork_equals_last_layer_exact():
    net = mlp()
    x, y = classification_data(30)
    a = lla.SubnetworkLaplace(net, subnetwork="last_layer", n_samples=2, **QUIET).fit((x, y))
    b = lla.ExactLaplace(net, parameters="last_layer", n_samples=2, **QUIET).fit((x, y))
    torch.testing.assert_close(a.posterior_covariance, b.posterior_covariance)


def _net_with_dead_inputs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


@pytest.mark.parametrize("strategy", ["swag", "diagonal_laplace", "magnitude", "random"])
def test_ranked_strategies_never_choose_weights_without_curvature(strategy):
    net = _net_with_dead_inputs()
    x, y = classification_data(40, n_in=4)
    x[:, 3] = 0.0  # input 3 is always zero: weights 3, 7, 11, ... of layer 0 have no curvature
    dead = torch.arange(3, 24, 4)
    sub = lla.SubnetworkLaplace(net, subnetwork=strategy, n_params=20, swag_epochs=3, **QUIET)
    sub.fit((x, y))
    selection = sub.linearisation.selection
    chosen_first_layer = (
        selection.indices[selection.indices < 24]
        if "0.weight" in selection.names
        else torch.tensor([])
    )
    assert sub.posterior_samples.shape[1] == 20
    assert not set(chosen_first_layer.tolist()) & set(dead.tolist())
    if strategy == "diagonal_laplace":  # without the exclusion, the dead weights would rank first
        assert sub.posterior_covariance.diagonal().max() < 1.0


def test_swag_variance_is_deterministic_and_positive():
    from linearised_laplace.coordinates.ranking import swag_variance

    net = mlp()
    x, y = classification_data(40)
    lin = lla.Linearisation(net)
    model = lla.LinearGaussianModel(
        lin,
        lla.Categorical(),
        lla.make_prior(1.0, lin.selection.group_ids, lin.selection.names),
        lla.Data((x, y), 10),
    )
    a = swag_variance(model, n_epochs=3, seed=0)
    b = swag_variance(model, n_epochs=3, seed=0)
    assert torch.equal(a, b) and bool((a > 0).all())
    assert torch.equal(net[0].weight, lin.model[0].weight)  # the user's weights are untouched


def test_subnetwork_em_runs_through_the_exact_machinery():
    net = mlp()
    x, y = classification_data(30)
    sub = lla.SubnetworkLaplace(net, subnetwork="magnitude", n_params=20, n_samples=2, **QUIET)
    history = sub.optimize_prior_precision((x, y), max_iter=3)
    assert len(history) >= 2 and float(sub.prior_precision) != 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"subnetwork": "swag"}, ValueError, "needs `n_params`"),
        ({"subnetwork": "swag", "n_params": 0}, ValueError, "`n_params` must be an integer >= 1"),
        ({"subnetwork": "swag", "n_params": 39}, ValueError, "exceeds the model's 38 trainable"),
        ({"subnetwork": torch.tensor([0, 0])}, ValueError, "must not repeat"),
        ({"subnetwork": torch.tensor([38])}, ValueError, r"must lie in \[0, 38\)"),
        ({"subnetwork": torch.tensor([1]), "n_params": 1}, ValueError, "ranking strategies only"),
        ({"subnetwork": "largest"}, ValueError, "`subnetwork` must be one of"),
        (
            {"subnetwork": "random", "n_params": 5, "prior_precision": [1.0, 2.0, 3.0, 4.0]},
            ValueError,
            "single `prior_precision`",
        ),
    ],
)
def test_bad_subnetworks_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        lla.SubnetworkLaplace(mlp(), **kwargs)


def test_too_few_live_weights_and_too_large_subnetworks_raise():
    net = _net_with_dead_inputs()
    x, y = classification_data(40, n_in=4)
    x[:, 3] = 0.0
    with pytest.raises(ValueError, match="Only 45 of 51 weights have non-zero curvature"):
        lla.SubnetworkLaplace(net, subnetwork="magnitude", n_params=50, **QUIET).fit((x, y))
    big = nn.Linear(4000, 500)
    with pytest.raises(MemoryError, match=r"SubnetworkLaplace over 1000000 parameters .* GiB"):
        lla.SubnetworkLaplace(big, subnetwork="random", n_params=1_000_000)
