import pytest
import torch
from torch import nn

import linearised_laplace as lla

from ..cases import classification_data, regression_data

QUIET = {"progress": False}


def _net(seed=0, width=5):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Linear(width, 3)
    ).eval()


def _check_same_predictions(a, b, x):
    # float64 round-off only: a dense covariance product may be reordered between two calls
    same = {"rtol": 1e-12, "atol": 1e-15}
    torch.testing.assert_close(b.predictive_samples(x), a.predictive_samples(x), **same)
    torch.testing.assert_close(b.functional_variance(x), a.functional_variance(x), **same)
    torch.testing.assert_close(b(x), a(x), **same)
    torch.testing.assert_close(b(x, link_approx="probit"), a(x, link_approx="probit"), **same)
    torch.testing.assert_close(b.prior_precision, a.prior_precision)


@pytest.mark.parametrize("method", [lla.SampledLaplace, lla.ExactLaplace])
def test_save_load_predicts_identically(method, tmp_path):
    x, y = classification_data(30)
    net = _net()
    kw = {
        "n_samples": 4,
        "g_prior": True,
        "parameters": torch.tensor([0, 3, 7, 20, 25, 40, 41]),
        **QUIET,
    }
    if method is lla.SampledLaplace:
        kw["solver"] = lla.SGD(n_epochs=5)
    la = method(net, **kw)
    la.optimize_prior_precision((x, y), max_iter=2)
    path = tmp_path / "la.safetensors"
    la.save(path)
    other = _net(
        seed=1
    )  # same architecture, different weights: the file's linearisation point wins
    loaded = method.load(path, other)
    _check_same_predictions(la, loaded, torch.randn(5, 3))
    assert loaded.em_history == la.em_history
    if method is lla.SampledLaplace:
        assert loaded.solver == la.solver
    else:
        torch.testing.assert_close(loaded.posterior_covariance, la.posterior_covariance)


def test_regression_round_trip_keeps_the_noise(tmp_path):
    x, y = regression_data(20, n_out=3)
    la = lla.SampledLaplace(
        _net(), "regression", sigma_noise=0.4, n_samples=3, solver=lla.SGD(n_epochs=2), **QUIET
    )
    la.fit((x, y)).save(tmp_path / "r.safetensors")
    loaded = lla.SampledLaplace.load(tmp_path / "r.safetensors", _net())
    assert float(loaded.sigma_noise) == 0.4
    mean, var = loaded(x[:4])
    torch.testing.assert_close(var, la(x[:4])[1])


def test_loading_onto_another_architecture_or_class_raises(tmp_path):
    x, y = classification_data(20)
    la = lla.ExactLaplace(_net(), n_samples=2, **QUIET).fit((x, y))
    path = tmp_path / "la.safetensors"
    la.save(path)
    with pytest.raises(
        ValueError, match=r"different model \(different shapes: 0.weight \[5, 3\] -> \[6, 3\]"
    ):
        lla.ExactLaplace.load(path, _net(width=6))
    with pytest.raises(ValueError, match="holds a ExactLaplace, not a SampledLaplace"):
        lla.SampledLaplace.load(path, _net())


def test_saving_needs_a_fit_and_a_writable_path(tmp_path):
    la = lla.SampledLaplace(_net(), n_samples=2, **QUIET)
    with pytest.raises(lla.NotFittedError):
        la.save(tmp_path / "x.safetensors")
    la.fit(classification_data(10))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        la.save(tmp_path / "no" / "x.safetensors")


def test_loaded_exact_posterior_has_no_data_for_the_evidence(tmp_path):
    x, y = classification_data(20)
    la = lla.ExactLaplace(_net(), n_samples=2, **QUIET).fit((x, y))
    la.save(tmp_path / "e.safetensors")
    loaded = lla.ExactLaplace.load(tmp_path / "e.safetensors", _net())
    with pytest.raises(lla.NotFittedError, match="needs the training data"):
        loaded.log_marginal_likelihood()
