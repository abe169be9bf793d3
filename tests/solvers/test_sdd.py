import warnings

import pytest

import linearised_laplace as lla
from linearised_laplace import SDD, ConvergenceWarning, DivergenceError, NoiseSource
from linearised_laplace.solvers.auto import choose_solver
from linearised_laplace.solvers.dual import solve_dual

from ..cases import classification_data, mlp
from ..helpers import matrix_model, relative_error
from .test_cholesky import closed_form


def _problem(likelihood="classification"):
    # n·C = 12·3 = 36 observations in minibatches of 4 points, D = 50
    model = matrix_model(n=12, d=50, likelihood=likelihood, alpha=[0.5, 3.0], batch_size=4)
    return model, lla.draw_posterior_noise(model, 3, NoiseSource(0), progress=False)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_sdd_samples_equal_the_closed_form(likelihood):
    model, noise = _problem(likelihood)
    result, w = solve_dual(model, noise.xi, noise.source, SDD(n_epochs=1000))
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-9
    assert float(result.info.rel_residual.max()) < 1e-9
    assert result.info.n_steps == 1000 * 3 and result.info.converged
    assert result.info.solver == "dual-sdd" and w.shape == (3, 36)


def test_warm_start_from_the_solution_stays_there():
    model, noise = _problem()
    exact, w = solve_dual(model, noise.xi, noise.source, lla.Cholesky())
    warm, _ = solve_dual(model, noise.xi, noise.source, SDD(n_epochs=2), init=w)
    cold, _ = solve_dual(model, noise.xi, noise.source, SDD(n_epochs=2))
    assert (
        relative_error(warm.samples, exact.samples)
        < 1e-10
        < 1e-2
        < relative_error(cold.samples, exact.samples)
    )


def test_sampled_laplace_runs_sdd_in_the_dual_and_warns_only_when_starved():
    net = mlp(
        hidden=12
    )  # D = 87 < n·C = 180: auto would pick the primal for CG, SDD keeps the dual
    data = classification_data(60)
    kw = {"n_samples": 3, "prior_precision": 2.0, "progress": False}
    exact = lla.ExactLaplace(net, **kw).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        la = lla.SampledLaplace(net, solver=SDD(n_epochs=300, batch_size=20), **kw).fit(data)
    assert la.solve_info.space == "dual" and la.solve_info.solver == "dual-sdd"
    assert relative_error(la.posterior_samples, exact.posterior_samples) < 1e-6
    starved = lla.SampledLaplace(net, space="dual", solver=SDD(n_epochs=1, batch_size=60), **kw)
    with pytest.warns(ConvergenceWarning, match=r"dual-sdd did not converge.*lla.SDD\(n_epochs"):
        starved.fit(data)
    assert starved.solve_info.n_steps == 1 and starved.solve_info.tolerance == 1e-2


def test_sdd_is_refused_in_the_primal_space():
    with pytest.raises(ValueError, match="SDD solves the dual"):
        lla.SampledLaplace(mlp(), space="primal", solver=SDD())
    model, _ = _problem()
    assert choose_solver(model, SDD()).space == "dual"


def test_divergence_names_the_step_to_lower():
    model, noise = _problem()
    with pytest.raises(DivergenceError, match=r"Lower the step, e.g. SDD\(lr=50\)"):
        solve_dual(model, noise.xi, noise.source, SDD(n_epochs=300, lr=100.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_epochs": 0}, "SDD `n_epochs` must be an integer >= 1, got 0"),
        ({"lr": 0.0}, "SDD `lr` must be a finite number > 0, got 0.0"),
        ({"lr": -1.0}, "SDD `lr` must be a finite number > 0"),
        ({"momentum": 1.0}, r"SDD `momentum` must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, r"SDD `momentum` must be in \[0, 1\)"),
        ({"averaging": 0.0}, r"SDD `averaging` must be in \(0, 1\] or None, got 0.0"),
        ({"batch_size": 0}, "SDD `batch_size` must be an integer >= 1 or None"),
        ({"curvature_iters": 0}, "SDD `curvature_iters` must be an integer >= 1"),
        ({"rtol": 0.0}, "SDD `rtol` must be a finite number > 0 or None"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDD(**kwargs)
