import warnings

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace import reference

from ..cases import classification_data, mlp, regression_data


def _dense_posterior(net, x, likelihood, alpha_diag):
    jac = reference.jacobian(net, x)
    hess = likelihood.hessian(net(x).detach())
    return jac, torch.linalg.inv(reference.posterior_precision(jac, hess, alpha_diag))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_covariance_and_functional_variance_match_dense_formulas(task):
    net = mlp(n_out=2 if task == "regression" else 3)
    x, y = (classification_data if task == "classification" else regression_data)(30)
    kw = {"sigma_noise": 0.5} if task == "regression" else {}
    la = lla.ExactLaplace(net, task, prior_precision=2.0, n_samples=4, progress=False, **kw).fit(
        (x, y)
    )
    jac, cov = _dense_posterior(net, x, la.likelihood, torch.full((la.n_params,), 2.0))
    torch.testing.assert_close(la.posterior_covariance, cov)
    x_new = torch.randn(5, 3)
    jac_new = reference.jacobian(net, x_new)
    torch.testing.assert_close(
        la.functional_variance(x_new), jac_new @ cov @ jac_new.transpose(1, 2)
    )
    if task == "regression":
        mean, var = la(x_new)
        torch.testing.assert_close(mean, net(x_new).detach())
        torch.testing.assert_close(var, la.functional_variance(x_new))
    else:
        probs = la(x_new)
        torch.testing.assert_close(probs.sum(1), torch.ones(5))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_h_is_the_unit_noise_ggn_without_the_prior(task):
    net = mlp(n_out=2 if task == "regression" else 3)
    x, y = (classification_data if task == "classification" else regression_data)(20)
    kw = {"sigma_noise": 0.5} if task == "regression" else {}
    la = lla.ExactLaplace(net, task, prior_precision=[1.0, 2.0, 3.0, 4.0], **kw, progress=False)
    la.fit((x, y))
    unit = lla.Gaussian(1.0) if kw else la.likelihood
    expected = reference.ggn(reference.jacobian(net, x), unit.hessian(net(x).detach()))
    torch.testing.assert_close(la.H, expected)


def test_layerwise_prior_and_last_layer():
    net = mlp()
    x, y = classification_data(20)
    la = lla.ExactLaplace(
        net, prior_precision=[1.0, 2.0, 3.0, 4.0], n_samples=2, progress=False
    ).fit((x, y))
    alpha = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat_interleave(torch.tensor([15, 5, 15, 3]))
    torch.testing.assert_close(
        la.posterior_covariance, _dense_posterior(net, x, la.likelihood, alpha)[1]
    )
    last = lla.ExactLaplace(net, parameters="last_layer", n_samples=2, progress=False).fit((x, y))
    jac = reference.jacobian(net, x, ["2.weight", "2.bias"])
    hess = last.likelihood.hessian(net(x).detach())
    expected = torch.linalg.inv(reference.posterior_precision(jac, hess, torch.ones(18)))
    torch.testing.assert_close(last.posterior_covariance, expected)


def test_exact_refuses_what_does_not_fit_in_memory():
    big = torch.nn.Linear(2000, 500)
    with pytest.raises(
        MemoryError,
        match=r"ExactLaplace over 1000500 parameters .* needs 14916.1 GiB .* parameters='last_layer'",
    ):
        lla.ExactLaplace(big)


def test_probit_and_extra_exact_samples_agree_with_monte_carlo():
    net = mlp()
    x, y = classification_data(30)
    la = lla.ExactLaplace(net, prior_precision=0.5, n_samples=8, progress=False).fit((x, y))
    x_new = torch.randn(5, 3)
    samples = la.predictive_samples(x_new, n_samples=20_000)  # 8 stored + exact R⁻ᵀξ draws
    assert samples.shape == (20_000, 5, 3)
    torch.testing.assert_close(samples[:8], la.predictive_samples(x_new))
    empirical = (samples - net(x_new).detach()).transpose(0, 1)
    cov = torch.einsum("nsc,nse->nce", empirical, empirical) / 20_000
    torch.testing.assert_close(cov, la.functional_variance(x_new), rtol=0.05, atol=2e-3)
    mc = samples.softmax(-1).mean(0)
    probit = la(x_new, link_approx="probit")
    assert float((probit - mc).abs().max()) < 0.05  # MacKay's approximation, not exact
    assert float((probit - net(x_new).softmax(-1)).abs().max()) > 1e-3  # but not the MAP either
    with pytest.raises(ValueError, match="'mc' or 'probit'"):
        la(x_new, link_approx="laplace")


@pytest.mark.parametrize("method", [lla.ExactLaplace, lla.NystromLaplace])
def test_validation_grid_picks_the_best_refit(method):
    net = mlp()
    x, y = classification_data(40)
    x_val, y_val = classification_data(30, seed=7)
    grid = [0.1, 1.0, 10.0, 100.0]
    la = method(net, n_samples=2, progress=False).fit((x, y))
    result = la.select_prior_precision((x_val, y_val), grid=grid)
    nlls = []
    for alpha in grid:
        ref = method(net, prior_precision=alpha, n_samples=2, progress=False).fit((x, y))
        probs = ref(x_val, link_approx="probit")
        nlls.append(float(-probs[torch.arange(30), y_val].log().mean()))
    torch.testing.assert_close(torch.tensor(result["nll"]), torch.tensor(nlls))
    assert result["prior_precision"] == grid[int(torch.tensor(nlls).argmin())]
    assert float(la.prior_precision) == result["prior_precision"]
    with pytest.raises(ValueError, match="`grid` must be finite and > 0"):
        la.select_prior_precision((x_val, y_val), grid=[0.0, 1.0])


def test_fit_linearises_at_the_weights_the_model_has_then():
    net = mlp(n_out=2)
    x, y = regression_data(30)
    la = lla.ExactLaplace(net, "regression", prior_precision=2.0, n_samples=2, progress=False)
    with torch.no_grad():  # "training" after construction
        for p in net.parameters():
            p.add_(0.3)
    la.fit((x, y))
    fresh = lla.ExactLaplace(net, "regression", prior_precision=2.0, n_samples=2, progress=False)
    fresh.fit((x, y))
    mean, var = la(x[:5])
    torch.testing.assert_close(mean, net(x[:5]).detach())
    torch.testing.assert_close(var, fresh.functional_variance(x[:5]))
    with torch.no_grad():
        next(net.parameters()).mul_(2.0)
    with pytest.raises(ValueError, match="changed since.*fit"):
        la.select_prior_precision((x, y))


def test_a_loaders_subset_sampler_fits_that_subset():
    net = mlp(n_out=2)
    x, y = regression_data(30)
    half = torch.arange(0, 30, 2)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=8,
        sampler=torch.utils.data.SubsetRandomSampler(half.tolist()),
    )
    kw = {"prior_precision": 2.0, "n_samples": 2, "progress": False}
    sub = lla.ExactLaplace(net, "regression", **kw).fit(loader)
    ref = lla.ExactLaplace(net, "regression", **kw).fit((x[half], y[half]))
    full = lla.ExactLaplace(net, "regression", **kw).fit((x, y))
    torch.testing.assert_close(sub.posterior_covariance, ref.posterior_covariance)
    assert not torch.allclose(sub.posterior_covariance, full.posterior_covariance)


def test_ggn_cache_is_reused_only_for_the_same_model(tmp_path, monkeypatch):
    net = mlp()
    x, y = classification_data(30)
    cache = tmp_path / "ggn.safetensors"

    def exact(data, **kw):
        la = lla.ExactLaplace(net, prior_precision=1.0, n_samples=3, progress=False, **kw)
        la.optimize_prior_precision(data, max_iter=3)
        return la

    plain = exact((x, y))
    cached = exact((x, y), ggn_cache=cache)
    assert cache.exists()
    torch.testing.assert_close(cached.prior_precision, plain.prior_precision)
    torch.testing.assert_close(cached.sample(), plain.sample())

    def refuse(*_):
        raise AssertionError("the cached GGN was rebuilt")

    with monkeypatch.context() as patch:  # the same model: M and its eigenvalues come from the file
        patch.setattr(lla.LinearGaussianModel, "dense_ggn", refuse)
        patch.setattr(torch.linalg, "eigvalsh", refuse)
        again = exact((x, y), ggn_cache=cache)
    torch.testing.assert_close(again.sample(), plain.sample())
    other = exact((x[:20], y[:20]), ggn_cache=cache)  # other data: rebuilt, not reused
    torch.testing.assert_close(other.sample(), exact((x[:20], y[:20])).sample())
    cache.write_bytes(cache.read_bytes()[:100])  # a damaged file is rebuilt too
    torch.testing.assert_close(exact((x, y), ggn_cache=cache).sample(), plain.sample())


def test_ggn_cache_keeps_the_ggn_when_the_eigenvalues_are_interrupted(tmp_path, monkeypatch):
    net = mlp()
    data = classification_data(30)
    cache = tmp_path / "ggn.safetensors"

    def em(cached=True):
        la = lla.ExactLaplace(net, ggn_cache=cache if cached else None, n_samples=2, progress=False)
        return la.optimize_prior_precision(data, max_iter=2)

    def interrupted(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(torch.linalg, "eigvalsh", interrupted)
        with pytest.raises(KeyboardInterrupt):
            em()
    assert cache.exists()
    with monkeypatch.context() as patch:  # the rerun starts from the saved GGN
        patch.setattr(lla.LinearGaussianModel, "dense_ggn", interrupted)
        resumed = em()
    assert resumed[-1]["prior_precision"] == pytest.approx(em(cached=False)[-1]["prior_precision"])


def test_em_with_an_sgd_mean_follows_newtons_path():
    net = mlp(n_out=3)
    data = classification_data(40)
    alpha = {}
    for epochs in (None, 400, 2):  # Newton; a converged SGD; an unconverged one (really used)
        solver = None if epochs is None else lla.SGD(n_epochs=epochs, batch_size=40)
        la = lla.ExactLaplace(net, prior_precision=1.0, mean_solver=solver, progress=False)
        with warnings.catch_warnings():  # the 2-epoch mean may leave EM unconverged
            warnings.simplefilter("ignore", lla.ConvergenceWarning)
            la.optimize_prior_precision(data, max_iter=8, tol=1e-9, mean="tangent")
        alpha[epochs] = float(la.prior_precision)
    assert alpha[400] == pytest.approx(alpha[None], rel=2e-3)
    assert abs(alpha[2] / alpha[None] - 1) > 1e-2


def test_new_hyperparameters_refit_from_the_held_noise_to_a_fresh_fits_samples():
    # the held noise, rescaled to the new σ, gives the samples a fit at the new α and σ draws
    net = mlp(n_out=2)
    x, y = regression_data(30)
    kw = {"n_samples": 3, "progress": False}
    la = lla.ExactLaplace(net, "regression", prior_precision=2.0, sigma_noise=0.5, **kw)
    la.fit((x, y))
    la.prior_precision, la.sigma_noise = 7.0, 0.2
    fresh = lla.ExactLaplace(net, "regression", prior_precision=7.0, sigma_noise=0.2, **kw)
    torch.testing.assert_close(la.posterior_samples, fresh.fit((x, y)).posterior_samples)
