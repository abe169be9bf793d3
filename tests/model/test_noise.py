import torch

from linearised_laplace import NoiseSource, draw_posterior_noise

from ..helpers import dense_parts, matrix_model


def test_draws_are_pure_functions_of_seed_and_index():
    source = NoiseSource(7)
    kw = {"dtype": torch.float64, "device": "cpu"}
    assert torch.equal(source.prior(3, 5, **kw), NoiseSource(7).prior(8, 5, **kw)[:3])
    assert not torch.equal(source.prior(1, 5, **kw), NoiseSource(8).prior(1, 5, **kw))
    idx = torch.tensor([700, 3, 255, 256])
    points = source.points(idx, 2, 4, **kw)
    assert points.shape == (2, 4, 4)
    for j, i in enumerate(idx):
        assert torch.equal(points[:, j], source.points(torch.tensor([i]), 2, 4, **kw)[:, 0])
    other = NoiseSource(7, stream="probe").points(idx, 2, 4, **kw)
    assert not torch.equal(points, other)
    assert torch.equal(source.points(idx, 2, 4, dtype=torch.float32, device="cpu"), points.float())


def test_noise_does_not_depend_on_batch_size():
    small, large = matrix_model(batch_size=4), matrix_model(batch_size=30)
    a = draw_posterior_noise(small, 3, NoiseSource(0), progress=False)
    b = draw_posterior_noise(large, 3, NoiseSource(0), progress=False)
    torch.testing.assert_close(a.u, b.u)
    torch.testing.assert_close(a.xi, b.xi)


def test_prior_and_data_draws_have_the_right_covariance():
    # R3: Cov[u] = M = Φᵀ B Φ and Cov[θⁿ] = A⁻¹ + A⁻¹ M A⁻¹, within 3× the Monte-Carlo error.
    model = matrix_model(n=20, d=6, alpha=[0.5, 3.0])
    phi, hess, _, precision = dense_parts(model)
    ggn = precision - torch.diag(model.precision.prior)
    k = 4000
    noise = draw_posterior_noise(model, k, NoiseSource(0), progress=False)
    a = model.precision.prior
    theta_n = noise.theta_n(a)
    expected = torch.diag(1 / a) + ggn / a[:, None] / a[None, :]
    for draws, cov in ((noise.u, ggn), (theta_n, expected)):
        empirical = draws.T @ draws / k
        mc_error = ((torch.trace(cov) ** 2 / cov.norm() ** 2 + 1) / k).sqrt()
        assert (empirical - cov).norm() / cov.norm() < 3 * mc_error
    torch.testing.assert_close(noise.rhs(a), a * theta_n)


def test_hutchinson_diagonal_is_unbiased():
    model = matrix_model(n=20, d=6)
    _, _, _, precision = dense_parts(model)
    diag = (precision - torch.diag(model.precision.prior)).diagonal()
    probes = 3000
    noise = draw_posterior_noise(model, 2, NoiseSource(1), progress=False, n_probes=probes)
    assert noise.u.shape == (2, 6) and noise.ggn_diag.shape == (6,)
    assert (noise.ggn_diag - diag).norm() / diag.norm() < 3 * (2 / probes) ** 0.5
