"""EM's end through the hyperparameter setters, and the σ check against validation data."""

import warnings

import pytest
import torch

import linearised_laplace as lla

from ..cases import mlp, regression_data

KW = {"n_samples": 4, "progress": False}


@pytest.mark.parametrize("method", [lla.ExactLaplace, lla.SampledLaplace])
def test_em_with_update_sigma_ends_fitted_at_both_learnt_values(method):
    net, (x, y) = mlp(n_out=2), regression_data(30)
    extra = {"solver": lla.Cholesky()} if method is lla.SampledLaplace else {}
    la = method(net, "regression", **KW, **extra)
    history = la.optimize_prior_precision((x, y), max_iter=3, update_sigma=True)
    assert la.prior_precision.tolist() == history[-1]["prior_precision"]
    assert float(la.sigma_noise) == history[-1]["sigma_noise"] != 1.0
    la(x)  # fitted at the learnt α and σ together, not refused as stale
    expected = method(
        net,
        "regression",
        prior_precision=la.prior_precision,
        sigma_noise=la.sigma_noise,
        **KW,
        **extra,
    ).fit((x, y))
    torch.testing.assert_close(la.sample(), expected.sample(), rtol=1e-8, atol=1e-10)


def test_a_sigma_far_below_the_validation_residuals_warns():
    net, (x, y) = mlp(n_out=2), regression_data(30)
    x_val = regression_data(20, seed=5)[0]
    with torch.no_grad():
        shifted = net(x_val) + 3.0  # residuals of 3: far above any σ EM learns here
    la = lla.ExactLaplace(net, "regression", **KW)
    with pytest.warns(UserWarning, match=r"EM learnt σ = .* below the validation mean squared"):
        la.optimize_prior_precision(
            (x, y), max_iter=3, update_sigma=True, val_loader=(x_val, shifted)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", lla.ConvergenceWarning)  # 3 steps: EM may not converge
        la.optimize_prior_precision((x, y), max_iter=3, update_sigma=True, val_loader=(x, y))


def test_a_validation_set_without_update_sigma_is_refused_before_any_work():
    la = lla.ExactLaplace(mlp(n_out=2), "regression", **KW)
    with pytest.raises(ValueError, match="update_sigma=True, `val_loader` checks the learnt σ"):
        la.optimize_prior_precision(
            regression_data(10), val_loader=regression_data(5), update_sigma=False
        )


def test_hyperparameters_take_a_hyperparameters_value_only():
    la = lla.ExactLaplace(mlp(n_out=2), "regression", **KW)
    with pytest.raises(TypeError, match="with_precision"):
        la.hyperparameters = 0.5
    la.hyperparameters = la.hyperparameters.with_sigma(0.3)
    assert float(la.sigma_noise) == pytest.approx(0.3)


def test_em_records_what_each_stage_and_step_cost():
    net = mlp(n_out=2)
    x, y = regression_data(40)
    solver = lla.CG(rtol=1e-8, preconditioner_rank=0)
    la = lla.SampledLaplace(net, "regression", n_samples=4, solver=solver, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lla.ConvergenceWarning)
        history = la.optimize_prior_precision((x, y), max_iter=2, tol=1e-12)
    assert list(la.em_costs) == ["set-up", "EM", "final samples"]
    steps = sum(h["cpu_seconds"] for h in history[1:])
    assert steps <= la.em_costs["EM"]["cpu_seconds"] + 1e-3
    assert all(cost["seconds"] > 0 for cost in la.em_costs.values())
    assert all(isinstance(h["solve_steps"], int) and h["solve_steps"] > 0 for h in history[1:])


def test_regression_em_defaults_to_the_network_mean_and_learns_sigma():
    net, data = mlp(n_out=2), regression_data(30)
    default = lla.ExactLaplace(net, "regression", **KW)
    default.optimize_prior_precision(data, max_iter=4)
    explicit = lla.ExactLaplace(net, "regression", **KW)
    explicit.optimize_prior_precision(data, max_iter=4, mean="network", update_sigma=True)
    tangent = lla.ExactLaplace(net, "regression", **KW)
    tangent.optimize_prior_precision(data, max_iter=4, mean="tangent", update_sigma=True)
    keys = ("prior_precision", "sigma_noise")
    assert [[h[k] for k in keys] for h in default.em_history] == [
        [h[k] for k in keys] for h in explicit.em_history
    ]
    assert float(default.sigma_noise) != 1.0
    assert default.prior_precision != tangent.prior_precision
