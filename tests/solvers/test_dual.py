import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.solvers.dual import gaussian_mean, solve_dual
from linearised_laplace.solvers.kernel import dual_matrix, kernel_vec, observations
from linearised_laplace.solvers.mean import MeanMode, MeanProblem, solve_mean
from linearised_laplace.solvers.newton import Newton

from ..cases import classification_data, mlp
from ..helpers import matrix_model, relative_error
from .test_cholesky import closed_form


def _noise(model, k=3):
    return lla.draw_posterior_noise(model, k, lla.NoiseSource(0), progress=False)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_exact_dual_samples_equal_primal_samples_for_the_same_noise(likelihood):
    # n·C = 12·3 = 36 < D = 50; the softmax B is singular, which the I + LᵀKL form never inverts.
    model = matrix_model(n=12, d=50, likelihood=likelihood, alpha=[0.5, 3.0])
    noise = _noise(model)
    result, _ = solve_dual(model, noise.xi, noise.source, lla.Cholesky())
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-8
    cg, w = solve_dual(model, noise.xi, noise.source, lla.CG(rtol=1e-6, preconditioner_rank=10))
    assert relative_error(cg.samples, closed_form(model, noise)) < 1e-3
    assert w.shape == (3, 36) and float(cg.info.rel_residual.max()) < 1e-6
    block = lla.CG(rtol=1e-10, preconditioner_rank=10, block=True)
    block_result, _ = solve_dual(model, noise.xi, noise.source, block)
    assert relative_error(block_result.samples, closed_form(model, noise)) < 1e-7


def test_dual_matrix_matches_its_products_and_preconditioning_helps():
    model = matrix_model(n=12, d=50, alpha=0.05)
    dense = dual_matrix(model)
    w = torch.randn(2, observations(model))
    torch.testing.assert_close(w + kernel_vec(model, w), w @ dense)
    noise = _noise(model)
    plain, _ = solve_dual(model, noise.xi, noise.source, lla.CG(rtol=1e-8, preconditioner_rank=0))
    ranked, _ = solve_dual(model, noise.xi, noise.source, lla.CG(rtol=1e-8, preconditioner_rank=30))
    assert ranked.info.n_steps < plain.info.n_steps
    starved, _ = solve_dual(
        model, noise.xi, noise.source, lla.CG(rtol=1e-8, max_iter=1, preconditioner_rank=0)
    )
    assert starved.info.space == "dual" and not starved.info.converged


def test_auto_space_picks_the_dual_when_observations_are_fewer_than_parameters():
    net = mlp(hidden=12)  # D = 87
    few, many = classification_data(10), classification_data(60)  # n·C = 30 < 87 < 180
    kw = {"n_samples": 3, "prior_precision": 2.0, "progress": False}
    dual = lla.SampledLaplace(net, solver=lla.CG(), **kw).fit(few)
    primal = lla.SampledLaplace(net, solver=lla.SGD(), **kw).fit(many)
    assert dual.solve_info.solver == "dual-cg" and primal.solve_info.solver == "sgd"
    assert dual.solve_info.space == "dual" and primal.solve_info.space == "primal"
    exact = lla.ExactLaplace(net, **kw).fit(few)
    assert relative_error(dual.posterior_samples, exact.posterior_samples) < 1e-4
    forced = lla.SampledLaplace(net, space="dual", solver=lla.Cholesky(), **kw).fit(many)
    assert (
        relative_error(
            forced.posterior_samples, lla.ExactLaplace(net, **kw).fit(many).posterior_samples
        )
        < 1e-8
    )


def test_dual_em_matches_primal_em():
    net = mlp(hidden=12)
    x, y = classification_data(10)
    kw = {"n_samples": 3, "progress": False}
    dual = lla.SampledLaplace(net, space="dual", solver=lla.CG(rtol=1e-10), **kw)
    primal = lla.SampledLaplace(net, space="primal", solver=lla.CG(rtol=1e-10), **kw)
    for la in (dual, primal):  # the same start and samples, so the same function-space γ̂
        la.optimize_prior_precision(  # start="auto" would start the primal one at its sketch's α
            (x, y), max_iter=4, n_em_samples=4, gamma="function", start="current"
        )
    torch.testing.assert_close(dual.prior_precision, primal.prior_precision, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", [MeanMode.TANGENT, MeanMode.AFFINE])
def test_gaussian_mean_in_the_dual_equals_the_primal_mode(mode):
    model = matrix_model(n=12, d=50, likelihood="regression", alpha=[0.5, 3.0])
    problem = MeanProblem(model, mode, torch.randn(model.n_params))
    zero = torch.zeros(1, model.n_params)
    primal = solve_mean(problem, Newton(rtol=1e-12), zero[0], model.precision.prior)
    targets = lambda x, y: y - problem.outputs(x, zero)[0]  # noqa: E731
    for solver, tol in ((lla.Cholesky(), 1e-10), (lla.CG(rtol=1e-8, preconditioner_rank=10), 1e-6)):
        dual = gaussian_mean(model, targets, solver)
        assert relative_error(dual.samples, primal.samples) < tol


def test_bad_dual_settings_raise():
    with pytest.raises(ValueError, match="`space` must be one of"):
        lla.SampledLaplace(mlp(), space="kernel")
    with pytest.raises(ValueError, match="not SGD"):
        lla.SampledLaplace(mlp(), space="dual", solver=lla.SGD())
    model = matrix_model(n=12, d=50)
    noise = _noise(model)
    with pytest.raises(TypeError, match="SGD is for the primal space"):
        solve_dual(model, noise.xi, noise.source, lla.SGD())


def test_the_kernel_preconditioner_grows_where_the_kernel_is_large(monkeypatch):
    import linearised_laplace.solvers.preconditioner as preconditioner
    from linearised_laplace.solvers.kernel import kernel_preconditioner

    model = matrix_model(n=20, d=80, alpha=1e-3)  # n·C = 60 observations, a large kernel
    assert len(kernel_preconditioner(model, 4, max_rank=16).values) == 16
    assert len(kernel_preconditioner(model, 4).values) == 4  # no max_rank: fixed
    monkeypatch.setattr(preconditioner, "RANK_SCALE", 1e-6)  # no doubling pays
    assert len(kernel_preconditioner(model, 4, max_rank=16).values) == 4
