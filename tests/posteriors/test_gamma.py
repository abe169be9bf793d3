import math

import torch

from linearised_laplace.posteriors.gamma import (
    exact_gamma,
    function_space_gamma,
    weight_space_gamma,
)

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
