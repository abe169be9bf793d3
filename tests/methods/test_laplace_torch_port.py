"""laplace-torch's behavioural tests, ported with only the README's renames.

Each test names the laplace-torch test it mirrors. laplace-torch builds ``nn.Sequential(nn.Linear(3,
20), nn.Linear(20, 2))`` on 10 points; the same shapes are used here, in float64.
"""

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Normal

import linearised_laplace as lla
from linearised_laplace import reference


def _model():
    torch.manual_seed(240)
    return nn.Sequential(nn.Linear(3, 20), nn.Linear(20, 2))


def _reg_data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(10, 3, generator=gen), torch.randn(10, 2, generator=gen)


def _class_data():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(10, 3, generator=gen), torch.randint(2, (10,), generator=gen)


def _dense_cov(model, x, hessians, alpha, names=None):
    jac = reference.jacobian(model, x, names)
    prior = torch.full((jac.shape[-1],), alpha)
    return jac, torch.linalg.inv(reference.posterior_precision(jac, hessians, prior))


# laplace-torch: tests/test_baselaplace.py::test_laplace_functionality (FullLaplace)
@pytest.mark.parametrize("lh", ["classification", "regression"])
def test_full_laplace_functionality(lh):
    model = _model()
    x, y = _reg_data() if lh == "regression" else _class_data()
    sigma = 0.3 if lh == "regression" else 1.0
    la = lla.ExactLaplace(model, lh, sigma_noise=sigma, prior_precision=0.7, n_samples=4)
    la.fit((x, y))
    assert la.n_data == len(x)
    assert la.n_outputs == 2
    f = model(x).detach()
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(la.linearisation.theta_star, theta)
    # the training log-likelihood at the network's outputs, following σ when it is set
    if lh == "classification":
        log_lik = Categorical(logits=f).log_prob(y).sum()
        torch.testing.assert_close(la.log_likelihood, log_lik)
    else:
        torch.testing.assert_close(la.log_likelihood, Normal(f, sigma).log_prob(y).sum())
        la.sigma_noise = sigma = 0.72
        log_lik = Normal(f, sigma).log_prob(y).sum()
        torch.testing.assert_close(la.log_likelihood, log_lik)
    # lml = log p(y|f) − ½ θᵀAθ + ½ log|A| − ½ log|H|, at θ* (laplace-torch's mean)
    prior = torch.diag(la.prior_precision_diag)
    assert prior.shape == (len(theta), len(theta))
    post = la.posterior_precision
    lml = log_lik - 0.5 * theta @ prior @ theta + 0.5 * (prior.logdet() - post.logdet())
    torch.testing.assert_close(la.log_marginal_likelihood(mean="network"), lml)
    # laplace-torch's H: the loss' GGN at unit noise, posterior_precision = H / σ² + prior
    torch.testing.assert_close(la.H / sigma**2 + prior, post)
    hessians = la.likelihood.hessian(f)
    jac, cov = _dense_cov(model, x, hessians, 0.7)
    torch.testing.assert_close(la.posterior_covariance, cov)
    # zero-mean deviations: θ* + sample has mean θ*
    samples = la.sample(20000)
    assert samples.shape == (20000, theta.numel())
    torch.testing.assert_close(samples.mean(0), torch.zeros_like(theta), atol=3e-2, rtol=0)
    # functional variance = J Σ Jᵀ
    torch.testing.assert_close(la.functional_variance(x), jac @ cov @ jac.transpose(1, 2))


# laplace-torch: tests/test_baselaplace.py::test_regression_predictive (pred_type="glm")
def test_regression_glm_predictive():
    model = _model()
    x, y = _reg_data()
    la = lla.ExactLaplace(model, "regression", sigma_noise=0.3, prior_precision=0.7, n_samples=4)
    la.fit((x, y))
    f_mu, f_var = la(x)
    torch.testing.assert_close(f_mu, model(x).detach())
    assert f_var.shape == (10, 2, 2)
    assert (torch.linalg.eigvalsh(f_var) > 0).all()
    # joint=True -> functional_covariance; its "diagonal" is the marginal covariance
    f_cov = la.functional_covariance(x)
    assert f_cov.reshape(20, 20).shape == (20, 20)
    torch.testing.assert_close(torch.einsum("bkbl->bkl", f_cov), f_var)
    torch.testing.assert_close(f_cov.reshape(20, 20), f_cov.reshape(20, 20).T)


# laplace-torch: tests/test_lllaplace.py::test_reg_glm_predictive_correct_behavior (FullLLLaplace;
# joint=True is functional_covariance, which has no diagonal_output)
def test_regression_diagonal_output():
    model = _model()
    x, y = _reg_data()
    la = lla.ExactLaplace(model, "regression", parameters="last_layer", n_samples=4).fit((x, y))
    f_mean, f_var = la(x, diagonal_output=True)
    assert f_var.shape == (10, 2)
    f_mean, f_cov = la(x, diagonal_output=False)
    assert f_cov.shape == (10, 2, 2)
    torch.testing.assert_close(f_var, f_cov.diagonal(dim1=1, dim2=2))
    assert la.functional_covariance(x).reshape(20, 20).shape == (20, 20)


# laplace-torch: tests/test_baselaplace.py::test_classification_predictive (glm, mc and probit)
def test_classification_glm_predictive():
    model = _model()
    x, y = _class_data()
    la = lla.ExactLaplace(model, "classification", prior_precision=0.7, n_samples=100).fit((x, y))
    f = torch.softmax(model(x), -1).detach()
    for link in ["mc", "probit"]:
        probs = la(x, link_approx=link)
        assert probs.shape == f.shape
        torch.testing.assert_close(probs.sum(-1), torch.ones(10))
        assert (probs > 0).all()
        # the predictive is less confident than the MAP's softmax
        assert (probs.max(-1).values <= f.max(-1).values + 1e-12).all()
    with pytest.raises(ValueError):
        la(x, link_approx="bridge")


# laplace-torch: tests/test_baselaplace.py::test_regression_predictive_samples
def test_regression_predictive_samples():
    model = _model()
    x, y = _reg_data()
    la = lla.ExactLaplace(model, "regression", sigma_noise=0.3, prior_precision=0.7, n_samples=4)
    la.fit((x, y))
    fs = la.predictive_samples(x, n_samples=5000)
    assert fs.shape == (5000, 10, 2)
    torch.testing.assert_close(fs.mean(0), model(x).detach(), atol=0.05, rtol=0)
    emp = torch.einsum("snc,snd->ncd", fs - fs.mean(0), fs - fs.mean(0)) / 4999
    torch.testing.assert_close(emp, la.functional_variance(x), atol=0.05, rtol=0.1)


# laplace-torch: tests/test_lllaplace.py::test_laplace_functionality (subset_of_weights="last_layer")
@pytest.mark.parametrize("lh", ["classification", "regression"])
def test_last_layer_functionality(lh):
    model = _model()
    x, y = _reg_data() if lh == "regression" else _class_data()
    kw = {"sigma_noise": 0.3} if lh == "regression" else {}
    la = lla.ExactLaplace(
        model, lh, parameters="last_layer", prior_precision=0.7, n_samples=4, **kw
    )
    la.fit((x, y))
    assert la.n_params == 20 * 2 + 2
    hessians = la.likelihood.hessian(model(x).detach())
    jac, cov = _dense_cov(model, x, hessians, 0.7, ["1.weight", "1.bias"])
    torch.testing.assert_close(la.posterior_covariance, cov)
    torch.testing.assert_close(la.functional_variance(x), jac @ cov @ jac.transpose(1, 2))
    # the last layer's variance is below the full network's
    full = lla.ExactLaplace(model, lh, prior_precision=0.7, n_samples=4, **kw).fit((x, y))
    assert (
        la.functional_variance(x).diagonal(dim1=1, dim2=2)
        < full.functional_variance(x).diagonal(dim1=1, dim2=2)
    ).all()


# laplace-torch: tests/test_subnetlaplace.py::test_custom_subnetwork_indices and
# ::test_regression_predictive (subset_of_weights="subnetwork")
def test_subnetwork_indices_predictive():
    model = _model()
    x, y = _reg_data()
    idx = torch.tensor([0, 5, 17, 60, 81, 100, 118, 121])
    la = lla.SubnetworkLaplace(
        model, "regression", subnetwork=idx, sigma_noise=0.3, prior_precision=0.7, n_samples=4
    ).fit((x, y))
    assert la.n_params == len(idx)
    jac = reference.jacobian(model, x)[..., idx]
    hessians = la.likelihood.hessian(model(x).detach())
    prec = reference.posterior_precision(jac, hessians, torch.full((len(idx),), 0.7))
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(la.posterior_covariance, cov)
    f_mu, f_var = la(x)
    torch.testing.assert_close(f_mu, model(x).detach())
    torch.testing.assert_close(f_var, jac @ cov @ jac.transpose(1, 2))
    # the same subset through ExactLaplace(parameters=indices)
    exact = lla.ExactLaplace(
        model, "regression", parameters=idx, sigma_noise=0.3, prior_precision=0.7, n_samples=4
    ).fit((x, y))
    torch.testing.assert_close(exact.posterior_covariance, cov)


# laplace-torch: tests/test_subnetlaplace.py::test_subnet_marginal_likelihood
def test_subnetwork_marginal_likelihood():
    model = _model()
    x, y = _class_data()
    idx = torch.tensor([1, 2, 30, 61, 99, 121])
    la = lla.SubnetworkLaplace(model, subnetwork=idx, prior_precision=0.7, n_samples=4).fit((x, y))
    lml = la.log_marginal_likelihood(mean="network")
    # the evidence over the subnetwork's weights, the rest held at θ*
    f = model(x).detach()
    theta = la.linearisation.theta_star
    assert theta.shape == (len(idx),)
    expected = (
        Categorical(logits=f).log_prob(y).sum()
        - 0.5 * 0.7 * (theta**2).sum()
        + 0.5 * (len(idx) * torch.log(torch.tensor(0.7)) + la.posterior_covariance.logdet())
    )
    torch.testing.assert_close(lml, expected)
    # a different prior gives a different evidence
    assert not torch.isclose(lml, la.log_marginal_likelihood(50.0, mean="network"))


# laplace-torch: tests/test_baselaplace.py::test_laplace_init_noise
def test_sigma_noise_init():
    model = _model()
    for sigma in [1.2, torch.tensor(1.2), torch.tensor(1.2).reshape(-1)]:
        la = lla.ExactLaplace(model, "regression", sigma_noise=sigma)
        torch.testing.assert_close(la.sigma_noise, torch.tensor(1.2))
    with pytest.raises(ValueError):
        lla.ExactLaplace(model, "classification", sigma_noise=1.2)
    for sigma in [torch.tensor(1.2).reshape(1, 1), "1.2"]:
        with pytest.raises(ValueError):
            lla.ExactLaplace(model, "regression", sigma_noise=sigma)


# laplace-torch: tests/test_baselaplace.py::test_laplace_functionality (the sigma_noise part:
# the likelihood and so the evidence follow σ; here also the posterior variance)
def test_sigma_noise_effects():
    model = _model()
    x, y = _reg_data()
    f = model(x).detach()
    fits = {
        s: lla.ExactLaplace(
            model, "regression", sigma_noise=s, prior_precision=0.7, n_samples=4
        ).fit((x, y))
        for s in [0.3, 0.72]
    }
    # larger noise -> less data precision -> larger functional variance
    var = {s: la.functional_variance(x).diagonal(dim1=1, dim2=2) for s, la in fits.items()}
    assert (var[0.72] > var[0.3]).all()
    # the evidence at σ = 0.72, from the σ = 0.3 fit, equals the σ = 0.72 fit's, and the
    # formula with Normal(f, 0.72)
    lml = fits[0.3].log_marginal_likelihood(sigma_noise=0.72, mean="network")
    torch.testing.assert_close(lml, fits[0.72].log_marginal_likelihood(mean="network"))
    theta = fits[0.72].linearisation.theta_star
    cov = fits[0.72].posterior_covariance
    expected = (
        Normal(f, 0.72).log_prob(y).sum()
        - 0.5 * 0.7 * (theta**2).sum()
        + 0.5 * (theta.numel() * torch.log(torch.tensor(0.7)) + cov.logdet())
    )
    torch.testing.assert_close(lml, expected)
    assert not torch.isclose(lml, fits[0.3].log_marginal_likelihood(mean="network"))


# laplace-torch: tests/test_baselaplace.py::test_gridsearch (scalar prior)
@pytest.mark.parametrize("lh", ["classification", "regression"])
def test_gridsearch(lh):
    model = _model()
    x, y = _reg_data() if lh == "regression" else _class_data()
    kw = {"sigma_noise": 0.3} if lh == "regression" else {}
    la = lla.ExactLaplace(model, lh, prior_precision=1.0, n_samples=4, **kw)
    grid = torch.logspace(-2, 2, 10)
    out = la.optimize_prior_precision((x, y), method="gridsearch", val_loader=(x, y), grid=grid)
    assert len(out["nll"]) == 10
    best = out["grid"][int(torch.tensor(out["nll"]).argmin())]
    assert out["prior_precision"] == best
    torch.testing.assert_close(la.prior_precision, torch.full_like(la.prior_precision, best))
    # the chosen α scores the validation NLL it reported
    assert min(out["nll"]) < max(out["nll"])
    with pytest.raises(ValueError):
        la.optimize_prior_precision((x, y), method="gridsearch")


# laplace-torch: tests/test_baselaplace.py::test_backprop_glm, ::test_backprop_glm_joint,
# ::test_backprop_glm_mc (and tests/test_lllaplace.py's)
@pytest.mark.parametrize("parameters", ["all", "last_layer"])
def test_backprop_glm(parameters):
    model = nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 2))
    x, y = _reg_data()
    la = lla.ExactLaplace(
        model, "regression", parameters=parameters, enable_backprop=True, n_samples=4
    ).fit((x, y))
    xg = x.clone().requires_grad_(True)
    f_mu, f_var = la(xg)
    g_mu = torch.autograd.grad(f_mu.sum(), xg, retain_graph=True)[0]
    g_var = torch.autograd.grad(f_var.sum(), xg)[0]
    for g in [g_mu, g_var]:
        assert g.shape == x.shape and torch.isfinite(g).all() and (g != 0).any()
    xg = x.clone().requires_grad_(True)
    g_cov = torch.autograd.grad(la.functional_covariance(xg).sum(), xg)[0]
    assert torch.isfinite(g_cov).all() and (g_cov != 0).any()
    xg = x.clone().requires_grad_(True)
    g_s = torch.autograd.grad(la.predictive_samples(xg).var(0).sum(), xg)[0]
    assert torch.isfinite(g_s).all() and (g_s != 0).any()
    # the variance's gradient agrees with finite differences
    xd = x.clone()
    eps = 1e-6
    xd[0, 0] += eps
    fd = (la.functional_variance(xd).sum() - la.functional_variance(x).sum()) / eps
    torch.testing.assert_close(g_var[0, 0], fd.detach(), rtol=1e-4, atol=1e-6)


# laplace-torch: tests/test_baselaplace.py::test_backprop_glm (classification, probit)
def test_backprop_classification():
    model = nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 2))
    x, y = _class_data()
    la = lla.ExactLaplace(model, enable_backprop=True, n_samples=4).fit((x, y))
    xg = x.clone().requires_grad_(True)
    g = torch.autograd.grad(la(xg, link_approx="probit")[:, 0].sum(), xg)[0]
    assert torch.isfinite(g).all() and (g != 0).any()
    # without enable_backprop the predictive is detached
    plain = lla.ExactLaplace(model, n_samples=4).fit((x, y))
    assert not plain(x.clone().requires_grad_(True), link_approx="probit").requires_grad


# laplace-torch: tests/test_subnetlaplace.py::test_score_based_subnet_masks (LargestMagnitudeSubnetMask)
def test_magnitude_subnetwork():
    model = _model()
    x, y = _class_data()
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    with pytest.raises(ValueError):
        lla.SubnetworkLaplace(model, subnetwork="magnitude", n_params=99999).fit((x, y))
    la = lla.SubnetworkLaplace(model, subnetwork="magnitude", n_params=32, n_samples=4)
    la.fit((x, y))
    assert la.n_params == 32
    assert la.posterior_covariance.shape == (32, 32)
    chosen = la.linearisation.selection.indices
    top = theta.abs().topk(32).indices.sort().values
    assert torch.equal(chosen.sort().values, top)
    # the network is not modified
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()).detach(), theta)


# laplace-torch: tests/test_baselaplace.py::test_gridsearch (prior_prec_type="layerwise")
def test_gridsearch_from_layerwise_prior():
    model = _model()
    x, y = _class_data()
    la = lla.ExactLaplace(model, prior_precision=torch.ones(4), n_samples=4)
    grid = torch.logspace(-2, 2, 10)
    out = la.optimize_prior_precision((x, y), method="gridsearch", val_loader=(x, y), grid=grid)
    best = out["prior_precision"]
    assert best in out["grid"]
    # the grid's α is isotropic, and the posterior is refitted at it
    torch.testing.assert_close(la.prior_precision, torch.full_like(la.prior_precision, best))
    hessians = la.likelihood.hessian(model(x).detach())
    torch.testing.assert_close(la.posterior_covariance, _dense_cov(model, x, hessians, best)[1])
