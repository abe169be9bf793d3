import pytest
import torch
from torch import nn

import linearised_laplace as lla
from linearised_laplace.coordinates.g_prior import (
    ScaledFeatures,
    g_prior_scale,
    ggn_diagonal_exact,
    ggn_diagonal_sampled,
)

from ..cases import classification_data
from ..helpers import dense_parts, matrix_model


def test_scaled_features_match_the_rescaled_matrix():
    model = matrix_model()
    idx = torch.tensor([2, 5, 7])
    scale = torch.rand(model.n_params) + 0.5
    scaled = ScaledFeatures(model.features, scale)
    dense = model.features.to_dense(idx) * scale
    v, u = torch.randn(2, model.n_params), torch.randn(2, 3, 3)
    torch.testing.assert_close(scaled.to_dense(idx), dense)
    torch.testing.assert_close(scaled.jvp(idx, v)[1], torch.einsum("bcd,kd->kbc", dense, v))
    torch.testing.assert_close(scaled.vjp(idx, u), torch.einsum("bcd,kbc->kd", dense, u))
    torch.testing.assert_close(
        scaled.per_example_vjp(idx, u[0]), torch.einsum("bcd,bc->bd", dense, u[0])
    )


def test_ggn_diagonal_exact_and_sampled():
    model = matrix_model(n=25)
    _, _, _, precision = dense_parts(model)
    diag = (precision - torch.diag(model.precision.prior)).diagonal()
    torch.testing.assert_close(ggn_diagonal_exact(model), diag)
    probes = 400
    estimate = ggn_diagonal_sampled(model, probes, lla.NoiseSource(0, stream="g"))
    # per-point squares: relative variance ≤ 2 / (probes · points); allow a generous 3σ of 2/probes
    assert float(((estimate - diag) / diag).abs().max()) < 3 * (2 / probes) ** 0.5
    assert torch.equal(g_prior_scale(torch.tensor([4.0, 0.0])), torch.tensor([0.5, 1e3]))


def _layer_norm_net(scale: float = 1.0):
    torch.manual_seed(0)
    # eps ≈ 0 so that the invariance f(cW) = f(W) is exact, not up to LayerNorm's eps
    net = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6, eps=1e-12), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight.mul_(scale)
        net[0].bias.mul_(scale)
    return net


@pytest.mark.parametrize("method", [lla.ExactLaplace, lla.SampledLaplace])
def test_g_prior_makes_alpha_and_predictive_invariant_to_weights_feeding_a_layer_norm(method):
    # R7: f(cW) = f(W) before a LayerNorm; J columns scale by 1/c; the g-prior undoes it.
    x, y = classification_data(40)
    x_test = torch.randn(6, 3)
    results = {}
    for g_prior in (True, False):
        for c in (1.0, 10.0):
            net = _layer_norm_net(c)
            la = method(net, g_prior=g_prior, n_samples=16, progress=False)
            la.optimize_prior_precision((x, y), max_iter=6, tol=1e-8)
            results[g_prior, c] = (la.prior_precision, la.functional_variance(x_test), la(x_test))
    tol = (
        {"rtol": 1e-6, "atol": 1e-9} if method is lla.ExactLaplace else {"rtol": 1e-3, "atol": 1e-6}
    )
    for a, b in zip(results[True, 1.0], results[True, 10.0], strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert not torch.allclose(results[False, 1.0][0], results[False, 10.0][0], rtol=1e-2)
    assert not torch.allclose(results[False, 1.0][1], results[False, 10.0][1], rtol=1e-2)


def test_g_prior_scales_samples_back_to_the_original_coordinates():
    x, y = classification_data(30)
    la = lla.ExactLaplace(_layer_norm_net(), g_prior=True, n_samples=3, progress=False).fit((x, y))
    s = la.scale.double()
    scaled_cov = torch.cholesky_inverse(la.posterior.factor)
    torch.testing.assert_close(la.posterior_covariance, s[:, None] * scaled_cov * s[None, :])
    torch.testing.assert_close(la.posterior_samples, la.posterior.samples * la.scale)
    diag = la.posterior.model.dense_ggn().diagonal()
    assert float((diag[diag > 1e-3] - 1).abs().max()) < 1e-8  # unit GGN diagonal after scaling


def test_g_prior_scale_is_the_scale_fit_uses():
    x, y = classification_data(30)
    la = lla.ExactLaplace(_layer_norm_net(), g_prior=True, n_samples=3, progress=False)
    scale = la.g_prior_scale((x, y)).clone()
    fitted = lla.ExactLaplace(_layer_norm_net(), g_prior=True, n_samples=3, progress=False)
    torch.testing.assert_close(scale, fitted.fit((x, y)).scale)
    with pytest.raises(ValueError, match="g_prior=True"):
        lla.ExactLaplace(_layer_norm_net(), progress=False).g_prior_scale((x, y))
