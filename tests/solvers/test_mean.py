import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.solvers.mean import MeanMode, MeanProblem, mean_mode, solve_mean
from linearised_laplace.solvers.newton import Newton

from ..helpers import dense_parts, matrix_model


def _targets(model):
    return model.data.dataset.tensors[1]


@pytest.mark.parametrize("mode", [MeanMode.TANGENT, MeanMode.AFFINE])
def test_gaussian_mean_matches_the_closed_form(mode):
    # R9: θ̄ = H⁻¹ Φᵀ B (y − o), o = 0 (tangent) or f₀ − Φ w* (affine).
    model = matrix_model(n=60, likelihood="regression", alpha=[0.5, 3.0], batch_size=16)
    phi, hess, _, precision = dense_parts(model)
    anchor = torch.randn(model.n_params)
    idx = torch.arange(60)
    offset = (
        torch.zeros(60, 3)
        if mode is MeanMode.TANGENT
        else model.features.forward(idx) - phi @ anchor
    )
    expected = torch.linalg.solve(
        precision, torch.einsum("ncd,nce,ne->d", phi, hess, _targets(model) - offset)
    )
    problem = MeanProblem(model, mode, anchor)
    jacobi = precision.diagonal()
    newton = solve_mean(problem, Newton(rtol=1e-12), torch.zeros_like(anchor), jacobi)
    assert float((newton.samples[0] - expected).norm() / expected.norm()) < 1e-9
    # minibatch SGD converges to a noise floor that shrinks with the batch and the final step
    sgd = solve_mean(
        problem, lla.SGD(n_epochs=400, batch_size=30, lr_end=1e-3), torch.zeros_like(anchor), jacobi
    )
    assert float((sgd.samples[0] - expected).norm() / expected.norm()) < 1e-2


def test_categorical_mean_is_the_stationary_point():
    model = matrix_model(n=60, alpha=0.5)
    phi, _, _, _ = dense_parts(model)
    problem = MeanProblem(model, MeanMode.TANGENT, torch.zeros(model.n_params))
    w = solve_mean(
        problem, Newton(rtol=1e-12), torch.zeros(model.n_params), torch.ones(model.n_params)
    ).samples[0]
    logits = phi @ w
    onehot = torch.nn.functional.one_hot(_targets(model), 3).double()
    grad = torch.einsum("ncd,nc->d", phi, logits.softmax(-1) - onehot) + model.precision.prior * w
    assert float(grad.norm()) < 1e-9
    # and it is a minimum: the objective rises in every random direction
    value = problem.value(w)
    for direction in torch.randn(5, model.n_params):
        assert problem.value(w + 1e-3 * direction) > value


def test_weak_prior_approaches_least_squares():
    model = matrix_model(n=60, d=5, likelihood="regression", alpha=1e-9)
    phi, _, _, _ = dense_parts(model)
    design = phi.reshape(-1, 5)
    least_squares = torch.linalg.lstsq(design, _targets(model).reshape(-1)).solution
    problem = MeanProblem(model, MeanMode.TANGENT, torch.zeros(5))
    w = solve_mean(problem, Newton(rtol=1e-12), torch.zeros(5), torch.ones(5)).samples[0]
    torch.testing.assert_close(w, least_squares, rtol=1e-6, atol=1e-8)


def test_bad_mean_mode_and_solver_raise():
    with pytest.raises(
        ValueError, match="`mean` must be 'auto' or one of 'tangent', 'affine', 'network'"
    ):
        mean_mode("map")
    problem = MeanProblem(matrix_model(), MeanMode.TANGENT, torch.zeros(8))
    with pytest.raises(TypeError, match=r"lla.Newton\(...\) or lla.SGD\(...\)"):
        solve_mean(problem, lla.CG(), torch.zeros(8), torch.ones(8))


def test_newton_preconditioned_by_the_exact_precision_takes_one_cg_iteration():
    from linearised_laplace.core.linalg import CholeskyPreconditioner, cholesky

    model = matrix_model(n=60, likelihood="regression", alpha=[0.5, 3.0], batch_size=16)
    phi, hess, _, precision = dense_parts(model)
    expected = torch.linalg.solve(
        precision, torch.einsum("ncd,nce,ne->d", phi, hess, _targets(model))
    )
    problem = MeanProblem(model, MeanMode.TANGENT, torch.zeros(model.n_params))
    init = torch.zeros(model.n_params)
    result = solve_mean(
        problem, Newton(rtol=1e-10), init, CholeskyPreconditioner(cholesky(precision))
    )
    torch.testing.assert_close(result.samples[0], expected)
    assert result.info.reason == "1 Newton steps, 1 CG iterations"
    jacobi = solve_mean(problem, Newton(rtol=1e-10), init, precision.diagonal())
    torch.testing.assert_close(jacobi.samples[0], expected)
    assert int(jacobi.info.reason.split()[3]) > 1


def test_auto_mean_is_the_network_but_a_classifiers_tangent_mode_under_the_g_prior():
    gaussian, categorical = lla.model.likelihoods.Gaussian(0.3), lla.model.likelihoods.Categorical()
    assert mean_mode("auto", categorical) is MeanMode.NETWORK
    assert mean_mode("auto", gaussian, g_prior=True) is MeanMode.NETWORK
    assert mean_mode("auto", categorical, g_prior=True) is MeanMode.TANGENT
    assert mean_mode("affine") is MeanMode.AFFINE
    assert mean_mode(MeanMode.TANGENT) is MeanMode.TANGENT
