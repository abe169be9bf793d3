import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.posteriors.gamma import fixed_point_precision
from linearised_laplace.solvers.mean import MeanMode
from linearised_laplace.tuning.mackay import mackay_update, sketch_start


def test_mackay_update_clips_estimates_only():
    ids = torch.tensor([0, 0, 0, 1])
    mean = torch.tensor([1.0, 1.0, 0.0, 2.0])
    clipped = mackay_update(torch.tensor([5.0, 0.1]), mean, ids, 2)
    torch.testing.assert_close(clipped, torch.tensor([2.0 / 2.0, 0.5 / 4.0]))
    exact = mackay_update(torch.tensor([2.5, 0.9]), mean, ids, 2, clip=False)
    torch.testing.assert_close(exact, torch.tensor([2.5 / 2.0, 0.9 / 4.0]))


def test_mackay_update_clips_estimates_to_the_rank_of_the_ggn():
    ids = torch.zeros(100, dtype=torch.long)
    mean = torch.ones(100)
    # 10 observations: M has rank ≤ 10, so γ̂ = 40 (an overshoot) is clipped to 10 − 1
    clipped = mackay_update(torch.tensor([40.0]), mean, ids, 1, n_observations=10)
    torch.testing.assert_close(clipped, torch.tensor([9.0 / 100.0], dtype=torch.float64))
    unbounded = mackay_update(torch.tensor([40.0]), mean, ids, 1)
    torch.testing.assert_close(unbounded, torch.tensor([40.0 / 100.0], dtype=torch.float64))
    # γ̂ = 9.8 < 10 is possible (an overfit network's γ lies just below n·C): it stands
    kept = mackay_update(torch.tensor([9.8]), mean, ids, 1, n_observations=10)
    torch.testing.assert_close(kept, torch.tensor([9.8 / 100.0], dtype=torch.float64))


def test_the_function_space_estimate_is_not_floored():
    mean, ids = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    tiny = torch.tensor([1e-6], dtype=torch.float64)
    assert float(mackay_update(tiny, mean, ids, 1)) == pytest.approx(0.25)  # floored at γ = 1
    assert float(mackay_update(tiny, mean, ids, 1, floor=False)) == pytest.approx(2.5e-7)


def _noise_free_linear_problem(n=60, d=8, sigma=0.5):
    """A linear network whose outputs are its targets (a MAP with zero gradient), float64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.logspace(0, -1, d)
    net = torch.nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(1, d, generator=gen, dtype=torch.float64))
    return net, x, net(x).detach(), sigma


def test_the_sketch_start_is_exact_em_where_the_sketch_spans_the_ggn_and_the_map_fits():
    # affine mean: θ̄ = (αI + M)⁻¹ M θ* exactly when the network's outputs are its targets, so the
    # fixed point in M's full eigenbasis is exact EM's.
    net, x, y, sigma = _noise_free_linear_problem()
    la = lla.ExactLaplace(net, "regression", sigma_noise=sigma, progress=False)
    la.optimize_prior_precision((x, y), max_iter=200, tol=1e-10, mean="affine", update_sigma=False)
    values, vectors = torch.linalg.eigh(x.T @ x / sigma**2)
    theta = net.weight.detach()[0]
    start = sketch_start(values, vectors, theta, network_mean=False)
    assert start == pytest.approx(float(la.prior_precision), rel=1e-6)
    # the same M kept in whitened coordinates (a per-weight prior d): V = d^{1/2} U, not orthonormal
    d = torch.linspace(0.5, 3.0, len(theta), dtype=torch.float64)
    ggn = x.T @ x / sigma**2
    whitened, u = torch.linalg.eigh(ggn / torch.outer(d, d).sqrt())
    assert sketch_start(whitened, d.sqrt()[:, None] * u, theta, False) == pytest.approx(start)
    network = sketch_start(values, vectors, theta, network_mean=True)
    la.optimize_prior_precision((x, y), max_iter=200, tol=1e-10, mean="network", update_sigma=False)
    assert network == pytest.approx(float(la.prior_precision), rel=1e-6)


def test_the_sketch_start_declines_where_it_has_no_fixed_point():
    values, vectors = torch.ones(2, dtype=torch.float64), torch.eye(3, 2, dtype=torch.float64)
    assert sketch_start(values, vectors, torch.zeros(3), network_mean=False) is None
    orthogonal = torch.tensor([0.0, 0.0, 1.0])  # θ* outside the sketch: ‖θ̄‖² = 0
    assert sketch_start(values, vectors, orthogonal, network_mean=False) is None
    assert sketch_start(values, vectors, orthogonal, network_mean=True) is not None


def test_em_starts_at_the_samplers_sketch_unless_told_to_start_at_the_prior():
    net, x, y, sigma = _noise_free_linear_problem()
    kw = {"sigma_noise": sigma, "n_samples": 2, "progress": False}
    solver = lla.CG(rtol=1e-10, preconditioner_rank=8)
    auto = lla.SampledLaplace(net, "regression", solver=solver, space="primal", **kw)
    auto.optimize_prior_precision((x, y), max_iter=1, mean="affine")
    values, vectors = torch.linalg.eigh(x.T @ x / sigma**2)
    expected = sketch_start(values, vectors, net.weight.detach()[0], network_mean=False)
    assert auto.em_history[0]["prior_precision"][0] == pytest.approx(expected, rel=1e-6)
    current = lla.SampledLaplace(net, "regression", solver=solver, space="primal", **kw)
    current.optimize_prior_precision((x, y), max_iter=1, mean="affine", start="current")
    assert current.em_history[0]["prior_precision"] == [1.0]
    with pytest.raises(ValueError, match="`start` must be one of"):
        current.optimize_prior_precision((x, y), start="sketch")


def test_the_sketch_start_with_the_diagonal_bounds_the_theta_star_fixed_point_from_above():
    # γ(α) = tr M(M + α)⁻¹ ≤ γ of the top-r sketch + Σ_j ρ_j/(ρ_j + α), ρ = diag(M − M_r)
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))[0]
    mu = torch.logspace(3, -2, 40, dtype=torch.float64)
    ggn = (basis * mu) @ basis.T
    theta = torch.randn(40, generator=gen, dtype=torch.float64)
    exact = fixed_point_precision(mu, float(theta.square().sum()))
    top = basis[:, :5], mu[:5]
    alone = sketch_start(top[1], top[0], theta, network_mean=True)
    completed = sketch_start(top[1], top[0], theta, network_mean=True, ggn_diag=ggn.diagonal())
    assert alone < exact < completed < 3 * exact
    full = sketch_start(mu, basis, theta, network_mean=True, ggn_diag=ggn.diagonal())
    assert full == pytest.approx(exact, rel=1e-5)  # nothing outside the sketch
    # the tangent mean's start ignores the diagonal
    assert sketch_start(*top[::-1], theta, False, ggn_diag=ggn.diagonal()) == sketch_start(
        *top[::-1], theta, False
    )


def test_a_sampler_with_the_theta_star_mean_starts_from_its_sketch_completed_by_its_diagonal():
    net, x, y, sigma = _noise_free_linear_problem()
    kw = {"sigma_noise": sigma, "n_samples": 2, "progress": False, "space": "primal"}
    la = lla.SampledLaplace(net, "regression", solver=lla.CG(preconditioner_rank=2), **kw)
    la.optimize_prior_precision((x, y), max_iter=1, mean="network", update_sigma=False)
    noise = la.posterior.expectation(
        la._fit_model((x, y)), MeanMode.NETWORK, la.coordinates.anchor(), la.seed, False
    )
    theta = net.weight.detach()[0]
    sketch = noise.sketch
    expected = sketch_start(sketch.values, sketch.vectors, theta, True, ggn_diag=noise.ggn_diag)
    assert la.em_history[0]["prior_precision"][0] == pytest.approx(expected, rel=1e-6)
    assert expected > sketch_start(sketch.values, sketch.vectors, theta, network_mean=True)
