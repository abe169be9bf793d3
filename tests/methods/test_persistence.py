import warnings

import pytest
import torch
from torch import nn

import linearised_laplace as lla
from linearised_laplace.core import persistence

from ..cases import classification_data, regression_data
from ..core.test_persistence import flip_payload_bit

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
    other = _net(seed=1)  # same architecture, different weights: the file's θ* wins, with a warning
    with pytest.warns(UserWarning, match=r"largest \|difference\| [0-9.]+, in '0.weight'"):
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


@pytest.fixture
def saved(tmp_path):
    """A fitted SampledLaplace's file, and the network it was fitted on."""
    net = _net()
    la = lla.SampledLaplace(net, n_samples=2, solver=lla.Cholesky(), **QUIET)
    path = tmp_path / "la.safetensors"
    la.fit(classification_data(20)).save(path)
    return path, net


def _rewrite(path, edit):
    """Edit a file's tensors and metadata and write it back, with fresh checksums."""
    tensors, meta = persistence.read(path)
    edit(tensors, meta)
    persistence.write(path, tensors, meta)


def test_a_flipped_bit_refuses_to_load(saved):
    path, net = saved
    flip_payload_bit(path)
    with pytest.raises(ValueError, match="is damaged: the tensor '.*' does not match the checksum"):
        lla.SampledLaplace.load(path, net)


def test_nan_samples_refuse_to_load(saved):
    path, net = saved
    _rewrite(path, lambda tensors, meta: tensors["samples"][0].fill_(float("nan")))
    with pytest.raises(ValueError, match="tensor 'samples' holds [0-9]+ NaN or infinite"):
        lla.SampledLaplace.load(path, net)


def _set(key, value):
    return lambda tensors, meta: meta.update({key: value})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t, m: m.pop("seed"), "lacks the field 'seed' \\(expected an integer\\)"),
        (_set("n_samples", "2"), "the field 'n_samples' should be an integer, got '2'"),
        (_set("g_prior", 1), "the field 'g_prior' should be true or false, got 1"),
        (_set("likelihood", "poisson"), "the field 'likelihood' should be one of"),
        (_set("selection", "all"), "the field 'selection' should be a list of \\[name, shape"),
        (_set("space", "tangent"), "the field 'space' should be one of 'auto', 'dual'"),
        (_set("solver", {"name": "Adam"}), "the field 'solver' should be .*got {'name': 'Adam'}"),
        (
            lambda t, m: m["mean_solver"].update(bogus=1),
            "'bogus' in the field 'mean_solver' is not a setting of Newton",
        ),
        (
            lambda t, m: m["mean_solver"].update(max_iter="50"),
            "mean_solver.max_iter should be a number like its default 50, got '50'",
        ),
        (_set("solver", {"name": "SGD", "lr": -1.0}), "'solver' holds settings SGD refuses"),
        (_set("n_samples", 0), "cannot be built: `n_samples` must be an integer >= 1, got 0"),
        (lambda t, m: t.pop("samples"), "has no tensor 'samples'"),
    ],
)
def test_doctored_metadata_names_the_field(saved, edit, match):
    path, net = saved
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=match):
        lla.SampledLaplace.load(path, net)


def test_loading_onto_other_weights_warns_or_raises_under_strict(saved):
    path, net = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the network it was fitted on: no warning
        lla.SampledLaplace.load(path, net)
    with torch.no_grad():
        net[3].bias[1] += 0.25
    text = r"largest \|difference\| 0.25, in '3.bias'\); predictions use the file's weights"
    with pytest.warns(UserWarning, match=text):
        lla.SampledLaplace.load(path, net)
    with pytest.raises(ValueError, match=text + ".*pass strict=False"):
        lla.SampledLaplace.load(path, net, strict=True)


def test_an_em_checkpoint_passed_to_load_says_how_to_resume(tmp_path):
    x, y = classification_data(20)
    la = lla.ExactLaplace(_net(), n_samples=2, **QUIET)
    path = tmp_path / "em.safetensors"
    la.optimize_prior_precision((x, y), max_iter=1, checkpoint=path)
    with pytest.raises(
        ValueError,
        match=r"is an EM checkpoint .* pass it as `checkpoint=` to `optimize_prior_precision`.*"
        r"`\.save\(path\)`",
    ):
        lla.ExactLaplace.load(path, _net())
