"""laplace-torch parity (issue 19, item 1): each feature against the dense oracle (float64)."""

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace import reference

from ..cases import classification_data, mlp, regression_data

QUIET = {"progress": False}
GRID = [0.01, 0.1, 1.0, 10.0, 100.0]
SIGMA = 0.3


def _data(task, n, seed):
    """Regression targets ``net(x) + 0.45 ε`` at σ = 0.3: the validation optimum is interior."""
    if task == "classification":
        return classification_data(n, seed=seed)
    x, _ = regression_data(n, seed=seed)
    f = mlp(n_out=2)(x).detach()
    return x, f + 0.45 * torch.randn(f.shape, generator=torch.Generator().manual_seed(seed))


def _setup(task):
    net = mlp(n_out=2 if task == "regression" else 3)
    kw = {"sigma_noise": SIGMA} if task == "regression" else {}
    return net, kw, _data(task, 20, seed=1), _data(task, 30, seed=7)


def _exact_validation_nll(la, val):
    """What select_prior_precision scores: the probit or the Gaussian predictive's mean NLL."""
    x, y = val
    if isinstance(la.likelihood, lla.Categorical):
        probs = la(x, link_approx="probit")
        return float(-probs[torch.arange(len(y)), y].log().mean())
    mean, cov = la(x)
    cov = cov + SIGMA**2 * torch.eye(cov.shape[-1])
    return float(-torch.distributions.MultivariateNormal(mean, cov).log_prob(y).mean())


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_grid_search_picks_the_validation_optimal_alpha(task):
    net, kw, train, val = _setup(task)
    brute = []
    for alpha in GRID:
        la = lla.ExactLaplace(net, task, prior_precision=alpha, n_samples=2, **kw, **QUIET)
        brute.append(_exact_validation_nll(la.fit(train), val))
    exact = lla.ExactLaplace(net, task, n_samples=2, **kw, **QUIET).fit(train)
    result = exact.select_prior_precision(val, grid=GRID)
    torch.testing.assert_close(torch.tensor(result["nll"]), torch.tensor(brute))
    best = int(torch.tensor(brute).argmin())
    assert result["prior_precision"] == GRID[best] == float(exact.prior_precision)
    if task == "regression":
        assert 0 < best < len(GRID) - 1  # an interior optimum: the test can tell


@pytest.mark.parametrize("space", ["primal", "dual"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sampled_grid_search_picks_the_exact_alpha_from_kept_noise(task, space):
    net, kw, train, val = _setup(task)
    kw.update(n_samples=3000, seed=2, **QUIET)
    exact = lla.ExactLaplace(net, task, **kw).fit(train)
    sampled = lla.SampledLaplace(net, task, solver=lla.Cholesky(), space=space, **kw).fit(train)
    picked = sampled.select_prior_precision(val, grid=GRID)
    reference = exact.select_prior_precision(val, grid=GRID)
    assert picked["prior_precision"] == reference["prior_precision"]
    # 3000 samples: the sample covariance of f is within a few per cent of the exact one
    torch.testing.assert_close(
        torch.tensor(picked["nll"]), torch.tensor(reference["nll"]), rtol=0.02, atol=0.0
    )
    # the noise is kept, rescaled: the samples at the chosen α are a fresh fit's at that α
    best = picked["prior_precision"]
    fresh = lla.SampledLaplace(
        net, task, solver=lla.Cholesky(), space=space, **{**kw, "prior_precision": best}
    ).fit(train)
    torch.testing.assert_close(sampled.posterior_samples, fresh.posterior_samples)
    torch.testing.assert_close(sampled.posterior_samples, exact.posterior_samples)
    assert float(sampled.prior_precision) == best


def test_sampled_grid_search_with_warm_started_cg_ends_at_the_exact_samples():
    net, _, train, val = _setup("classification")
    kw = {"n_samples": 6, "seed": 2, **QUIET}
    cg = lla.SampledLaplace(net, solver=lla.CG(rtol=1e-12), space="primal", **kw).fit(train)
    exact = lla.ExactLaplace(net, **kw).fit(train)
    picked = cg.select_prior_precision(val, grid=GRID)
    exact.select_prior_precision(val, grid=[picked["prior_precision"]])
    torch.testing.assert_close(cg.posterior_samples, exact.posterior_samples)


@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_optimize_prior_precision_gridsearch_is_select_prior_precision(method):
    net, _, train, val = _setup("classification")
    make = {
        "exact": lambda: lla.ExactLaplace(net, n_samples=3, **QUIET),
        "sampled": lambda: lla.SampledLaplace(net, n_samples=3, solver=lla.Cholesky(), **QUIET),
    }[method]
    result = make().optimize_prior_precision(train, method="gridsearch", val_loader=val, grid=GRID)
    expected = make().fit(train).select_prior_precision(val, grid=GRID)
    assert result == expected
    history = make().optimize_prior_precision(train, method="em", max_iter=2, tol=10.0)
    assert isinstance(history, list) and "gamma" in history[-1]


def test_optimize_prior_precision_method_errors():
    net, _, train, _ = _setup("classification")
    la = lla.SampledLaplace(net, n_samples=2, **QUIET)
    with pytest.raises(ValueError, match="gridsearch.*pass `val_loader="):
        la.optimize_prior_precision(train, method="gridsearch")
    with pytest.raises(ValueError, match=r"`method` must be one of \('em', 'gridsearch'\)"):
        la.optimize_prior_precision(train, method="marglik")
    with pytest.raises(ValueError, match="for method='gridsearch'; EM learns"):
        la.optimize_prior_precision(train, val_loader=train)
    with pytest.raises(
        ValueError, match=r"\['update_sigma', 'n_em_samples'\] apply to method='em'"
    ):
        la.optimize_prior_precision(
            train, method="gridsearch", val_loader=train, update_sigma=True, n_em_samples=4
        )
    with pytest.raises(lla.NotFittedError, match=r"fit\("):
        la.select_prior_precision(train)


def _oracle_covariance(net, x_train, likelihood, alpha, x):
    """``J_a Σ J_bᵀ`` ``[N, C, N, C]`` from reference.jacobian and the dense posterior covariance."""
    jac = reference.jacobian(net, x_train)
    hess = likelihood.hessian(net(x_train).detach())
    alpha = torch.full((jac.shape[-1],), alpha)
    cov = torch.linalg.inv(reference.posterior_precision(jac, hess, alpha))
    jac_x = reference.jacobian(net, x)
    return torch.einsum("acd,de,bfe->acbf", jac_x, cov, jac_x)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_functional_covariance_is_the_dense_joint_covariance(task):
    net, kw, train, _ = _setup(task)
    la = lla.ExactLaplace(net, task, prior_precision=2.0, n_samples=2, **kw, **QUIET).fit(train)
    x = torch.randn(4, 3)
    joint = la.functional_covariance(x)
    assert joint.shape == (4, la.model[-1].out_features, 4, la.model[-1].out_features)
    torch.testing.assert_close(joint, _oracle_covariance(net, train[0], la.likelihood, 2.0, x))
    blocks = torch.stack([joint[a, :, a, :] for a in range(4)])
    torch.testing.assert_close(blocks, la.functional_variance(x))
    assert float(joint[0, :, 1, :].abs().max()) > 1e-3  # the off-diagonal blocks are not zero


def test_sampled_functional_covariance_is_within_its_monte_carlo_error():
    # R2: E‖Σ̂ − Σ‖²_F = (tr(Σ)² + ‖Σ‖²_F)/S for S zero-mean Gaussian samples; allow 3× that.
    net, _, train, _ = _setup("classification")
    n_samples, x = 2000, torch.randn(4, 3)
    kw = {"prior_precision": 2.0, "n_samples": n_samples, "seed": 4, **QUIET}
    sampled = lla.SampledLaplace(net, solver=lla.CG(rtol=1e-10), **kw).fit(train)
    estimate = sampled.functional_covariance(x)
    exact = lla.ExactLaplace(net, **kw).fit(train).functional_covariance(x).reshape(12, 12)
    mc_error = float(((torch.trace(exact) ** 2 / exact.norm() ** 2 + 1) / n_samples).sqrt())
    relative = float((estimate.reshape(12, 12) - exact).norm() / exact.norm())
    assert mc_error / 10 < relative < 3 * mc_error  # an estimate, and a good one
    blocks = torch.stack([estimate[a, :, a, :] for a in range(4)])
    torch.testing.assert_close(blocks, sampled.functional_variance(x))
    # a dense solve knows Σ: its functional covariance is exact, not estimated
    dense = lla.SampledLaplace(net, solver=lla.Cholesky(), **kw).fit(train)
    torch.testing.assert_close(dense.functional_covariance(x).reshape(12, 12), exact)


@pytest.mark.parametrize(
    "method",
    [
        lambda *a, **kw: lla.ExactLaplace(*a, **kw),
        lambda *a, **kw: lla.SampledLaplace(*a, solver=lla.Cholesky(), **kw),
        lambda *a, **kw: lla.SampledLaplace(*a, tangent_batching="vmap", **kw),
        lambda *a, **kw: lla.ExactLaplace(*a, parameters="last_layer", g_prior=True, **kw),
    ],
    ids=["exact", "sampled", "sampled-vmap", "exact-g-prior-last-layer"],
)
def test_enable_backprop_gradients_match_finite_differences(method):
    net, _, train, _ = _setup("classification")
    la = method(net, prior_precision=0.5, n_samples=5, enable_backprop=True, **QUIET).fit(train)
    x = torch.randn(2, 3, requires_grad=True)
    for predictive in (
        la.linearisation.forward,
        la.functional_variance,
        la.functional_covariance,
        la.predictive_samples,
        lambda x: la(x, link_approx="probit"),
        lambda x: la(x, link_approx="mc"),
    ):
        assert torch.autograd.gradcheck(predictive, (x,))
    regression = method(mlp(n_out=2), "regression", n_samples=3, enable_backprop=True, **QUIET)
    regression.fit(_data("regression", 20, seed=1))
    assert torch.autograd.gradcheck(lambda x: regression(x), (x,))
    assert not any(p.grad is not None for p in net.parameters())  # the network is left alone


def test_the_dense_predictive_is_detached_without_enable_backprop():
    net, _, train, _ = _setup("classification")
    la = lla.ExactLaplace(net, n_samples=2, **QUIET).fit(train)
    x = torch.randn(2, 3, requires_grad=True)
    assert not la(x, link_approx="probit").requires_grad
    assert not la.functional_covariance(x).requires_grad


@pytest.mark.parametrize(
    "method",
    [
        lambda *a, **kw: lla.ExactLaplace(*a, **kw),
        lambda *a, **kw: lla.SampledLaplace(*a, solver=lla.CG(rtol=1e-12), space="primal", **kw),
        lambda *a, **kw: lla.SampledLaplace(*a, solver=lla.SGD(n_epochs=3), **kw),
        lambda *a, **kw: lla.ExactLaplace(*a, g_prior=True, **kw),
    ],
    ids=["exact", "sampled-cg", "sampled-sgd", "exact-g-prior"],
)
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.filterwarnings("ignore:sgd did not converge")  # both runs equally inexact
def test_a_constant_diagonal_prior_is_the_scalar_prior(task, method):
    net, kw, train, _ = _setup(task)
    kw.update(n_samples=3, seed=5, **QUIET)
    d = sum(p.numel() for p in net.parameters())
    scalar = method(net, task, prior_precision=2.0, **kw).fit(train)
    diagonal = method(net, task, prior_precision=torch.full((d,), 2.0), **kw).fit(train)
    assert diagonal.prior_precision.shape == (d,)
    x = torch.randn(4, 3)
    torch.testing.assert_close(diagonal.posterior_samples, scalar.posterior_samples)
    torch.testing.assert_close(diagonal.functional_variance(x), scalar.functional_variance(x))


def test_a_diagonal_prior_gives_the_dense_posterior_and_is_refused_by_em():
    net, _, train, val = _setup("classification")
    d = sum(p.numel() for p in net.parameters())
    alpha = torch.linspace(0.5, 5.0, d)
    la = lla.ExactLaplace(net, prior_precision=alpha, n_samples=2, **QUIET).fit(train)
    jac = reference.jacobian(net, train[0])
    hess = la.likelihood.hessian(net(train[0]).detach())
    expected = torch.linalg.inv(reference.posterior_precision(jac, hess, alpha))
    torch.testing.assert_close(la.posterior_covariance, expected)
    with pytest.raises(ValueError, match=r"EM does not learn a per-weight \[D\] prior"):
        la.optimize_prior_precision(train)
    with pytest.raises(ValueError, match=r"or one per parameter \(38\), got 37 values"):
        lla.SampledLaplace(net, prior_precision=alpha[1:])
    result = la.optimize_prior_precision(train, method="gridsearch", val_loader=val, grid=GRID)
    assert la.prior_precision.tolist() == [result["prior_precision"]]  # isotropic again


def test_predictive_samples_beyond_the_fitted_ones():
    net, _, train, _ = _setup("classification")
    kw = {"prior_precision": 2.0, "n_samples": 3, **QUIET}
    exact = lla.ExactLaplace(net, **kw).fit(train)
    x = torch.randn(4, 3)
    more = exact.predictive_samples(x, n_samples=7)
    torch.testing.assert_close(more[:3], exact.predictive_samples(x))
    torch.testing.assert_close(more[:2], exact.predictive_samples(x, n_samples=2))
    torch.testing.assert_close(more, exact.predictive_samples(x, n_samples=9)[:7])  # one stream
    new = more[3:].flatten(1)
    assert float(torch.cdist(new, more[:3].flatten(1)).min()) > 1e-3  # new draws, not repeats
    sampled = lla.SampledLaplace(net, **kw).fit(train)
    with pytest.raises(ValueError, match=r"Only 3 posterior samples .* n_samples=7 and fit again"):
        sampled.predictive_samples(x, n_samples=7)
