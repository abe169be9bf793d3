import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import linearised_laplace as lla

from ..cases import classification_data, mlp, regression_data, transformer_classifier

QUIET = {"progress": False}


def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_samples_equal_exact_samples_for_the_same_seed(task):
    net = mlp(n_out=2 if task == "regression" else 3)
    x, y = (classification_data if task == "classification" else regression_data)(30)
    kw = {"prior_precision": 2.0, "n_samples": 4, "seed": 3, **QUIET}
    exact = lla.ExactLaplace(net, task, **kw).fit((x, y))
    cg = lla.SampledLaplace(net, task, solver=lla.CG(rtol=1e-12), **kw).fit((x, y))
    sgd = lla.SampledLaplace(net, task, solver=lla.SGD(), **kw).fit((x, y))
    auto = lla.SampledLaplace(net, task, **kw).fit((x, y))
    assert _relative(cg.posterior_samples, exact.posterior_samples) < 1e-8
    assert _relative(sgd.posterior_samples, exact.posterior_samples) < 0.05
    assert sgd.solve_info.n_steps == 50 and sgd.solve_info.rel_residual.shape == (4,)
    assert auto.solve_info.solver == "cholesky" and "auto: Cholesky" in auto.solve_info.reason
    assert _relative(auto.posterior_samples, exact.posterior_samples) < 1e-10


@pytest.mark.parametrize("solver", [lla.SGD(n_epochs=5), lla.CG(rtol=1e-12)])
def test_held_features_give_the_matrix_free_samples(solver):
    net = mlp().double()
    x, y = classification_data(30)
    kw = {"prior_precision": 2.0, "n_samples": 3, "seed": 1, "solver": solver, **QUIET}
    held = lla.SampledLaplace(net, **kw).fit((x.double(), y))
    free = lla.SampledLaplace(net, feature_memory_gib=0, **kw).fit((x.double(), y))
    assert _relative(held.posterior_samples, free.posterior_samples) < 1e-10
    with pytest.raises(ValueError, match="feature_memory_gib"):
        lla.SampledLaplace(net, feature_memory_gib=-1.0)


def test_sample_covariance_converges_to_the_exact_covariance():
    # R2: E‖Σ̂ − Σ‖²_F = (tr(Σ)² + ‖Σ‖²_F)/S for zero-mean Gaussian samples; allow 3× that error.
    net = mlp(hidden=4)
    x, y = classification_data(40)
    kw = {"prior_precision": 1.0, "seed": 0, **QUIET}
    exact = lla.ExactLaplace(net, n_samples=1, **kw).fit((x, y))
    n_samples = 3000
    sampled = lla.SampledLaplace(
        net, n_samples=n_samples, tangent_batching="vmap", solver=lla.SGD(n_epochs=300), **kw
    ).fit((x, y))
    samples, cov = sampled.posterior_samples, exact.posterior_covariance
    mc_error = float(((torch.trace(cov) ** 2 / cov.norm() ** 2 + 1) / n_samples).sqrt())
    assert _relative(samples.T @ samples / n_samples, cov) < 3 * mc_error
    assert (
        float(samples.mean(0).abs().max()) < 4 * float(cov.diagonal().max().sqrt()) / n_samples**0.5
    )
    x_new = torch.randn(6, 3)
    exact_var = exact.functional_variance(x_new)
    assert _relative(sampled.functional_variance(x_new), exact_var) < 3 * mc_error


@pytest.mark.parametrize("space", ["primal", "dual"])
def test_on_a_dense_path_em_and_the_predictive_are_exact(space, tmp_path):
    # a Cholesky solve leaves Σ: γ and J Σ Jᵀ come from it, so EM reaches exact EM's fixed point
    net = mlp(n_out=2)
    x, y = regression_data(30)
    kw = {"seed": 0, **QUIET}
    exact = lla.ExactLaplace(net, "regression", **kw)
    exact.optimize_prior_precision((x, y), tol=1e-6, max_iter=100)
    sampled = lla.SampledLaplace(net, "regression", solver=lla.Cholesky(), space=space, **kw)
    sampled.optimize_prior_precision((x, y), tol=1e-6, max_iter=100)
    assert [h["prior_precision"][0] for h in sampled.em_history] == pytest.approx(
        [h["prior_precision"][0] for h in exact.em_history], rel=1e-8
    )
    torch.testing.assert_close(sampled.sigma_noise, exact.sigma_noise, rtol=1e-8, atol=0)
    variance = sampled.functional_variance(x[:5])
    torch.testing.assert_close(variance, exact.functional_variance(x[:5]), rtol=1e-8, atol=1e-12)
    sampled.save(tmp_path / "la.safetensors")
    loaded = lla.SampledLaplace.load(tmp_path / "la.safetensors", net)
    torch.testing.assert_close(loaded.functional_variance(x[:5]), variance, rtol=1e-12, atol=1e-15)


def test_transformer_classifier_matches_exact_through_the_jvp_fallback():
    net = transformer_classifier().eval()
    x, y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    kw = {"prior_precision": 5.0, "n_samples": 2, **QUIET}  # K < C: JVPs, not the Jacobian path
    exact = lla.ExactLaplace(net, **kw).fit((x, y))
    with pytest.warns(UserWarning, match="does not support forward-mode AD"):
        sampled = lla.SampledLaplace(
            net, solver=lla.CG(rtol=1e-10), feature_memory_gib=0, **kw
        ).fit((x, y))  # matrix-free, so that the fit's JVPs take the fallback
    assert _relative(sampled.posterior_samples, exact.posterior_samples) < 1e-6
    torch.testing.assert_close(sampled.predictive_samples(x[:4]), exact.predictive_samples(x[:4]))


def _model_with_state():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)
    )
    net.train()
    net[3].eval()
    return net


@pytest.mark.parametrize("method", [lla.SampledLaplace, lla.ExactLaplace])
def test_user_model_is_never_modified(method):
    net = _model_with_state()
    x, y = classification_data(20)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    grads = [p.grad for p in net.parameters()]
    la = (
        method(net, n_samples=2, solver=lla.SGD(n_epochs=2), **QUIET)
        if method is lla.SampledLaplace
        else method(net, n_samples=2, **QUIET)
    )
    la.fit(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    la(x[:5]), la.predictive_samples(x[:5]), la.functional_variance(x[:5])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm running stats
    assert [m.training for m in net.modules()] == flags
    assert [p.grad for p in net.parameters()] == grads


def test_shapes_determinism_and_loader_independence():
    net = mlp()
    x, y = classification_data(30)
    kw = {"n_samples": 5, "solver": lla.SGD(n_epochs=3), **QUIET}
    la = lla.SampledLaplace(net, seed=1, **kw).fit((x, y))
    assert la.posterior_samples.shape == (5, la.n_params)
    assert la.predictive_samples(x[:4]).shape == (5, 4, 3)
    assert la.functional_variance(x[:4]).shape == (4, 3, 3)
    assert la(x[:4]).shape == (4, 3)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    again = lla.SampledLaplace(net, seed=1, **kw).fit(loader)
    assert torch.equal(la.posterior_samples, again.posterior_samples)
    other = lla.SampledLaplace(net, seed=2, **kw).fit((x, y))
    assert not torch.allclose(la.posterior_samples, other.posterior_samples)
    assert la.prior_precision.tolist() == [1.0] and float(la.sigma_noise) == 1.0


def test_regression_call_returns_mean_and_functional_variance():
    net = mlp(n_out=2)
    x, y = regression_data(30)
    la = lla.SampledLaplace(
        net, "regression", sigma_noise=0.3, n_samples=4, solver=lla.SGD(n_epochs=2), **QUIET
    )
    mean, var = la.fit((x, y))(x[:3])
    torch.testing.assert_close(mean, net(x[:3]).detach())
    assert var.shape == (3, 2, 2) and float(la.sigma_noise) == 0.3


def _nan_inputs():
    x, y = classification_data(10)
    x[4, 1] = float("nan")
    return x, y


def _bad_labels():
    x, y = classification_data(10)
    y[2] = 3
    return x, y


def _nan_targets():
    x, y = regression_data(10)
    y[0, 0] = float("inf")
    return x, y


@pytest.mark.parametrize(
    ("task", "data", "error", "match"),
    [
        ("classification", _nan_inputs, ValueError, "training inputs contain 1 non-finite"),
        ("classification", _bad_labels, ValueError, r"labels must lie in \[0, 3\)"),
        ("regression", _nan_targets, ValueError, "training targets contain 1 non-finite"),
        ("classification", lambda: (torch.zeros(0, 3), torch.zeros(0).long()), ValueError, "empty"),
        (
            "classification",
            lambda: (classification_data(5)[0], torch.zeros(5)),
            TypeError,
            "integer class labels",
        ),
        (
            "regression",
            lambda: (regression_data(5)[0], torch.zeros(5, 3)),
            ValueError,
            r"shape \[N, C\] = \[5, 2\]",
        ),
    ],
)
@pytest.mark.parametrize("method", [lla.SampledLaplace, lla.ExactLaplace])
def test_bad_training_data_raise_before_any_solve(method, task, data, error, match):
    net = mlp(n_out=2 if task == "regression" else 3)
    la = method(net, task, n_samples=2, **QUIET)
    with pytest.raises(error, match=match):
        la.fit(data())
    with pytest.raises(lla.NotFittedError, match=r"call `.fit\(train_loader\)` first"):
        la.predictive_samples(torch.zeros(1, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prior_precision": 0.0}, ValueError, "`prior_precision` must be finite and > 0"),
        ({"prior_precision": [1.0, 2.0]}, ValueError, r"one per parameter group \(4: 0.weight"),
        ({"sigma_noise": -1.0}, ValueError, "`sigma_noise` must be finite and > 0"),
        ({"n_samples": 0}, ValueError, "`n_samples` must be an integer >= 1"),
        ({"parameters": ["head.*"]}, ValueError, "no trainable parameter matches"),
    ],
)
def test_bad_configuration_raises(kwargs, error, match):
    task = "regression" if "sigma_noise" in kwargs else "classification"
    with pytest.raises(error, match=match):
        lla.SampledLaplace(mlp(), task, **kwargs)


def test_likelihood_and_model_mismatches_raise():
    with pytest.raises(ValueError, match="applies to regression only"):
        lla.SampledLaplace(mlp(), "classification", sigma_noise=0.5)
    with pytest.raises(ValueError, match="C >= 2 outputs"):
        lla.SampledLaplace(mlp(n_out=1), n_samples=2, **QUIET).fit(
            classification_data(8, n_classes=1)
        )
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="holds no trainable parameters"):
        lla.ExactLaplace(frozen)


def test_divergence_raises_instead_of_returning_nan():
    x, y = classification_data(30)
    la = lla.SampledLaplace(mlp(), n_samples=2, solver=lla.SGD(lr=100.0, n_epochs=20), **QUIET)
    with pytest.raises(lla.DivergenceError, match="Lower the step"):
        la.fit((x, y))


def test_predictive_samples_subsets_and_refuses_more_than_drawn():
    x, y = classification_data(20)
    la = lla.SampledLaplace(mlp(), n_samples=4, solver=lla.SGD(n_epochs=2), **QUIET).fit((x, y))
    torch.testing.assert_close(
        la.predictive_samples(x[:3], n_samples=2), la.predictive_samples(x[:3])[:2]
    )
    with pytest.raises(ValueError, match="Only 4 posterior samples were drawn, 5 were asked for"):
        la.predictive_samples(x[:3], n_samples=5)


def _small_noise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    x = torch.randn(80, 2)
    return net, (x, torch.sin(x[:, :1]))


def test_convergence_warning_fires_on_a_starved_solve_and_not_on_a_converged_one():
    import warnings

    net, data = _small_noise()
    kw = {"sigma_noise": 0.05, "prior_precision": 1e-3, "n_samples": 3, **QUIET}
    starved = lla.SGD(n_epochs=1, precondition=False)
    with pytest.warns(lla.ConvergenceWarning, match=r"samples ended above .* lla.SGD\(n_epochs"):
        la = lla.SampledLaplace(net, "regression", solver=starved, **kw).fit(data)
    assert not la.solve_info.converged
    with pytest.raises(lla.ConvergenceError, match="did not converge"):
        lla.SampledLaplace(net, "regression", solver=starved, strict=True, **kw).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lla.ConvergenceWarning)
        good = lla.SampledLaplace(net, "regression", solver=lla.CG(), strict=True, **kw).fit(data)
    assert good.solve_info.converged and good.solve_info.tolerance == 1e-8  # float64 default
    with pytest.warns(lla.ConvergenceWarning):  # EM never uses an unconverged E-step silently
        lla.SampledLaplace(net, "regression", solver=starved, **kw).optimize_prior_precision(
            data, max_iter=1, n_em_samples=2
        )


def test_preconditioned_sgd_samples_small_noise_regression_like_exact():
    # cond(H) ≈ 1e6 here: Jacobi SGD stays far off; the Nyström preconditioner brings it within 5%
    net, data = _small_noise()
    kw = {"sigma_noise": 0.05, "prior_precision": 1e-2, "n_samples": 4, "seed": 1, **QUIET}
    exact = lla.ExactLaplace(net, "regression", **kw).fit(data)
    nystrom = lla.SampledLaplace(net, "regression", solver=lla.SGD(), **kw).fit(data)
    jacobi = lla.SGD(preconditioner_rank=0)
    with pytest.warns(lla.ConvergenceWarning):
        diagonal = lla.SampledLaplace(net, "regression", solver=jacobi, **kw).fit(data)
    x_new = torch.randn(20, 2)
    mean = net(x_new).detach()
    errors = [
        _relative(la.predictive_samples(x_new) - mean, exact.predictive_samples(x_new) - mean)
        for la in (nystrom, diagonal)
    ]
    assert errors[0] < 0.05 < 0.5 < errors[1]


def test_auto_choice_is_one_line_of_the_progress_output(capsys):
    x, y = classification_data(20)
    lla.SampledLaplace(mlp(), n_samples=2, progress=True).fit((x, y))
    assert "auto: Cholesky, a dense primal solve is cheap" in capsys.readouterr().err
    lla.SampledLaplace(mlp(), n_samples=2, progress=False).fit((x, y))
    assert "auto:" not in capsys.readouterr().err
