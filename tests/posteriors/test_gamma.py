import math

import pytest
import torch
from scipy.optimize import brentq

import linearised_laplace as lla
from linearised_laplace.model.noise import NoiseSource
from linearised_laplace.posteriors.gamma import (
    dual_space_terms,
    exact_gamma,
    fixed_point_precision,
    function_space_gamma,
    function_space_terms,
    pooled_gamma,
    weight_space_gamma,
)
from linearised_laplace.solvers.dual import solve_dual

from ..helpers import dense_parts, matrix_model


def test_gamma_estimators_are_unbiased_with_the_predicted_variances():
    # R4: γ = tr(H⁻¹M) = Σ r_j, r_j = μ_j/(μ_j + α); Var[ζᵀMζ] = 2Σr², Var[α‖ζ‖²] = 2Σ(1 − r)².
    model = matrix_model(n=30, d=8, alpha=2.0, likelihood="regression")
    _, _, _, precision = dense_parts(model)
    ggn = precision - 2.0 * torch.eye(8)
    mu = torch.linalg.eigvalsh(ggn)
    r = mu / (mu + 2.0)
    gamma = float(r.sum())
    cov = torch.linalg.inv(precision)
    torch.testing.assert_close(
        exact_gamma(cov.diagonal(), model.precision.prior, torch.zeros(8, dtype=torch.long), 1),
        torch.tensor([gamma]),
    )
    k = 20_000
    chol = torch.linalg.cholesky(cov)
    samples = torch.randn(k, 8, generator=torch.Generator().manual_seed(0)) @ chol.T
    per_sample_fn = torch.einsum("kd,de,ke->k", samples, ggn, samples)
    per_sample_w = 8 - 2.0 * samples.square().sum(1)
    for values, variance in (
        (per_sample_fn, 2 * (r**2).sum()),
        (per_sample_w, 2 * ((1 - r) ** 2).sum()),
    ):
        assert abs(float(values.mean()) - gamma) < 4 * math.sqrt(variance / k)
        assert abs(float(values.var()) / float(variance) - 1) < 0.1
    # the library's estimators compute the same per-sample quantities
    fn = function_space_gamma(model, samples[:50], 1)
    torch.testing.assert_close(fn, per_sample_fn[:50].mean().reshape(1))
    w = weight_space_gamma(model.precision.prior, samples[:50], torch.zeros(8, dtype=torch.long), 1)
    torch.testing.assert_close(w, per_sample_w[:50].mean().reshape(1))


def test_layerwise_function_space_gamma_matches_trace_per_group():
    model = matrix_model(n=30, d=8, alpha=[1.0, 3.0])
    _, _, _, precision = dense_parts(model)
    ggn = precision - torch.diag(model.precision.prior)
    samples = torch.randn(7, 8)
    expected = torch.stack(
        [
            torch.einsum("kd,de,ke->k", samples[:, g], ggn[g][:, :], samples).mean()
            for g in (slice(0, 4), slice(4, 8))
        ]
    )
    torch.testing.assert_close(function_space_gamma(model, samples, 2), expected)
    ggn_z = samples @ ggn  # products a solver already computed: no data pass, same estimate
    torch.testing.assert_close(function_space_gamma(model, samples, 2, ggn_z), expected)
    single = matrix_model(n=30, d=8, alpha=2.0)
    torch.testing.assert_close(
        function_space_gamma(single, samples, 1, ggn_z), function_space_gamma(single, samples, 1)
    )


def _dual_draws(model, k: int, seed: int = 0):
    """``k`` exact samples and their dual solutions ``w`` (the dual sampler's own noise)."""
    xi = torch.randn(k, model.n_params, generator=torch.Generator().manual_seed(seed))
    result, w = solve_dual(model, xi, NoiseSource(seed), lla.Cholesky())
    return result.samples, w


def test_the_dual_space_estimate_is_unbiased_with_variance_from_the_observations():
    # Cov(w) = (I + LᵀKL)⁻¹ = K̃⁻¹: E[n·C − ‖w‖²] = n·C − tr K̃⁻¹ = γ, Var = 2 tr K̃⁻² = 2 Σ (1 − r_i)²
    # n·C = 12 < D and γ near n·C (overfit)
    model = matrix_model(n=12, c=1, d=20, alpha=0.05, likelihood="regression")
    _, _, _, precision = dense_parts(model)
    gamma = float(torch.trace(torch.linalg.solve(precision, precision - 0.05 * torch.eye(20))))
    k = 20_000
    samples, w = _dual_draws(model, k)
    kernel = torch.eye(12) + _kernel(model)
    variance = 2 * float(torch.linalg.matrix_power(torch.linalg.inv(kernel), 2).trace())
    values = dual_space_terms(w)
    assert abs(float(values.mean()) - gamma) < 4 * math.sqrt(variance / k)
    assert abs(float(values.var()) / variance - 1) < 0.1
    # here the function-space estimate's variance 2 Σ r² is far larger
    function = function_space_terms(model, samples[:2000])
    assert float(function.var()) > 10 * variance
    assert abs(float(function.mean()) - gamma) < 4 * math.sqrt(float(function.var()) / 2000)


def _kernel(model):
    """``Lᵀ Φ A⁻¹ Φᵀ L`` ``[n·C, n·C]``, formed densely."""
    phi, _, factor, _ = dense_parts(model)
    rows = torch.einsum("ncb,ncd->nbd", factor, phi).reshape(-1, phi.shape[-1])
    return rows @ torch.diag(1 / model.precision.prior) @ rows.T


def test_pooling_weights_each_estimate_by_the_other_s_variance():
    a = torch.tensor([1.0, 3.0])  # mean 2, variance 2
    b = torch.tensor([4.0, 4.5])  # mean 4.25, variance 0.125
    pooled = float(pooled_gamma(a, b))
    assert pooled == pytest.approx((0.125 * 2 + 2 * 4.25) / 2.125)
    assert float(pooled_gamma(torch.full((3,), 5.0), torch.full((3,), 7.0))) == pytest.approx(6.0)


def test_a_dual_em_step_pools_and_its_error_tracks_the_better_estimate():
    # 8 samples per E-step, over 40 seeds: the pooled error is near the dual estimate's, far
    # below the function-space estimate's where γ nears n·C
    model = matrix_model(n=12, c=1, d=20, alpha=0.05, likelihood="regression")
    _, _, _, precision = dense_parts(model)
    gamma = float(torch.trace(torch.linalg.solve(precision, precision - 0.05 * torch.eye(20))))
    errors = {"pooled": [], "function": []}
    for seed in range(40):
        samples, w = _dual_draws(model, 8, seed)
        function = function_space_terms(model, samples)
        errors["pooled"].append(float(pooled_gamma(function, dual_space_terms(w))) - gamma)
        errors["function"].append(float(function.mean()) - gamma)
    rms = {k: math.sqrt(sum(e * e for e in v) / len(v)) for k, v in errors.items()}
    assert rms["pooled"] < rms["function"] / 3


def test_the_fixed_point_precision_is_the_root_of_mackays_equation():
    # α ‖θ*‖² = γ(α) = Σ μ/(μ + α) has one positive root; brentq finds it independently.
    mu = torch.logspace(-3, 4, 50, dtype=torch.float64)
    norm = 3.7
    root = brentq(lambda a: a * norm - float((mu / (mu + a)).sum()), 1e-12, 1e6, xtol=1e-14)
    assert fixed_point_precision(mu, norm) == pytest.approx(root, rel=1e-9)
