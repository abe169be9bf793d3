import math

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace import reference
from linearised_laplace.network.linearisation import Linearisation
from linearised_laplace.tomography import RayTransform, shepp_logan
from linearised_laplace.tomography.dip import DIPConfig, fit_dip
from linearised_laplace.tomography.linearised import LinearisedDIP, exact_linearised_dip
from linearised_laplace.tomography.unet import Flatten, UNet

from ..helpers import relative_error

SIGMA = 0.05


@pytest.fixture(scope="module")
def problem():
    torch.set_default_dtype(torch.float64)
    op = RayTransform(16, 4, dtype=torch.float64)  # m = 64 measurements
    truth = shepp_logan(16).double()
    y = op(truth) + SIGMA * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = UNet(depth=2, width=2, skip=1, groups=1)  # D = 168
    _, losses = fit_dip(net, y, op, DIPConfig(iterations=40, lr=1e-2), progress=False)
    assert losses[-1] < losses[0]
    z = op.fbp(y[None])[None]
    return net, op, z, y.reshape(1, -1)


def _dense(la, z):
    """``Φ`` ``[m, D]`` in the posterior's coordinates and the image Jacobian ``J S`` ``[H·W, D]``."""
    phi = la.coordinates.features().to_dense(z)[0]
    image = Linearisation(Flatten(la.model)).to_dense(z)[0] * la.scale
    return phi, image


@pytest.mark.parametrize(
    ("space", "solver"),
    [("dual", lla.Cholesky()), ("primal", lla.Cholesky()), ("dual", lla.CG(rtol=1e-10))],
)
def test_image_samples_equal_the_exact_posterior_for_the_same_noise(problem, space, solver):
    net, op, z, y = problem
    la = LinearisedDIP(
        net,
        op,
        sigma_noise=SIGMA,
        space=space,
        solver=solver,
        n_samples=4,
        prior_precision=3.0,
        progress=False,
    )
    la.fit((z, y))
    model = la.linear_model((z, y))
    noise = lla.draw_posterior_noise(model, 4, lla.NoiseSource(la.seed), progress=False)
    phi, image = _dense(la, z)
    m = phi.shape[0]
    nu = noise.source.points(torch.arange(1), 4, m, dtype=phi.dtype, device="cpu")
    factors = torch.eye(m)[None] / SIGMA
    zeta = reference.sto_closed_form(
        phi[None], factors, model.precision.prior, noise.xi, nu, factors @ factors
    )
    expected = (zeta @ image.T).reshape(4, 16, 16)
    assert relative_error(la.image_samples(z), expected) < 1e-7


def _mackay(phi, target, anchor_alpha, steps):
    """Exact MacKay EM with the affine mean, from dense matrices."""
    ggn = phi.T @ phi / SIGMA**2
    values = torch.linalg.eigvalsh(ggn).clamp_min(0)
    alpha = anchor_alpha
    for _ in range(steps):
        mean = torch.linalg.solve(ggn + alpha * torch.eye(len(ggn)), phi.T @ target / SIGMA**2)
        alpha = float((values / (values + alpha)).sum() / mean.square().sum())
    return alpha


def test_exact_baseline_matches_dense_mackay_and_covariance(problem):
    net, op, z, y = problem
    la = LinearisedDIP(net, op, sigma_noise=SIGMA, progress=False)
    la.linear_model((z, y))
    result = exact_linearised_dip(
        net, op, z, y, SIGMA, la.scale, max_iter=100, tol=1e-10, n_samples=2000, chunk=500
    )
    phi, image = _dense(la, z)
    f0 = la.coordinates.observed().forward(z)[0]
    target = y[0] - f0 + phi @ la.coordinates.anchor()
    alpha = _mackay(phi, target, 1.0, 2000)  # plain MacKay iterations to its fixed point
    assert result.history[-1]["converged"] and len(result.history) < 60
    assert abs(result.prior_precision / alpha - 1) < 1e-8
    covariance = image @ torch.linalg.solve(
        phi.T @ phi / SIGMA**2 + alpha * torch.eye(phi.shape[1]), image.T
    )
    variance = result.samples.reshape(2000, -1).square().mean(0)
    # each pixel variance estimate has relative standard error √(2/S) ≈ 3.2%
    z_scores = (variance / covariance.diagonal() - 1) / math.sqrt(2 / 2000)
    assert float(z_scores.abs().max()) < 5 and abs(float(z_scores.mean())) < 1.5


def test_sampled_em_tracks_the_exact_em(problem):
    net, op, z, y = problem
    la = LinearisedDIP(
        net, op, sigma_noise=SIGMA, solver=lla.Cholesky(), n_samples=4, progress=False
    )
    history = la.optimize_prior_precision((z, y), max_iter=3, tol=1e-12, n_em_samples=256)
    exact = exact_linearised_dip(net, op, z, y, SIGMA, la.scale, max_iter=3, tol=1e-12, n_samples=1)
    sampled = history[-1]["prior_precision"][0]
    # γ̂ from K = 256 samples has a relative error of a few per cent
    assert abs(sampled / exact.prior_precision - 1) < 0.1


def test_bad_measurements_raise(problem):
    net, op, _, y = problem
    with pytest.raises(ValueError, match=r"shape \[4, 16\]"):
        fit_dip(UNet(depth=2, width=2), y, op)
    bad = y.reshape(4, 16).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        fit_dip(UNet(depth=2, width=2), bad, op)
