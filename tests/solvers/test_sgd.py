import pytest
import torch

from linearised_laplace import SGD, DivergenceError, NoiseSource, draw_posterior_noise

from ..helpers import matrix_model, relative_error
from .test_cholesky import closed_form


@pytest.mark.parametrize("objective", ["low_variance", "naive"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_full_batch_descent_reaches_the_closed_form(objective, likelihood):
    model = matrix_model(likelihood=likelihood, alpha=[0.5, 3.0], batch_size=30)
    noise = draw_posterior_noise(model, 3, NoiseSource(0), progress=False)
    config = SGD(n_epochs=1500, lr_end=1.0, objective=objective)
    result = config.solve(model, noise, progress=False)
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-8
    assert float(result.info.rel_residual.max()) < 1e-8


def test_minibatch_sgd_reaches_the_closed_form_within_budget():
    model = matrix_model(n=60, batch_size=20)
    noise = draw_posterior_noise(model, 4, NoiseSource(0), progress=False)
    result = SGD(n_epochs=3000, lr_end=1e-3).solve(model, noise, progress=False)
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-3
    assert result.info.n_steps == 3000 * 3 and result.info.top_eigenvalue > 0


def test_low_variance_objective_has_the_lower_error_floor():
    model = matrix_model(n=60, batch_size=3)
    noise = draw_posterior_noise(model, 8, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    errors = {
        objective: relative_error(
            SGD(n_epochs=20, objective=objective).solve(model, noise, progress=False).samples, exact
        )
        for objective in ("low_variance", "naive")
    }
    assert errors["low_variance"] < 0.5 * errors["naive"]


def test_warm_start_from_the_solution_stays_there():
    model = matrix_model(n=40, batch_size=40)  # full batch: no gradient noise
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    config = SGD(n_epochs=5)
    warm = config.solve(model, noise, init=exact, progress=False)
    cold = config.solve(model, noise, progress=False)
    assert relative_error(warm.samples, exact) < 1e-12 < 1e-2 < relative_error(cold.samples, exact)


def test_polyak_average_is_returned_and_reported_to_the_callback():
    model = matrix_model(n=40, batch_size=10)
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    seen = []
    result = SGD(n_epochs=3, polyak=0.1).solve(
        model, noise, progress=False, callback=lambda step, z: seen.append((step, z.clone()))
    )
    assert [step for step, _ in seen] == list(range(1, 13))
    torch.testing.assert_close(result.samples, seen[-1][1])
    plain = SGD(n_epochs=3).solve(model, noise, progress=False)
    assert not torch.allclose(result.samples, plain.samples)


def test_divergence_is_reported_with_the_setting_to_change():
    model = matrix_model(n=40, batch_size=10)
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    with pytest.raises(DivergenceError, match=r"Lower the step, e.g. SGD\(lr=25\)"):
        SGD(lr=50.0, n_epochs=50, retries=0).solve(model, noise, progress=False)


def test_divergence_backs_off_to_a_stable_step():
    model = matrix_model(n=40, batch_size=10)
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    with pytest.warns(
        RuntimeWarning, match=r"diverged with lr=8; retrying from the start with lr=4"
    ):
        result = SGD(lr=8.0, n_epochs=100).solve(model, noise, progress=False)
    assert relative_error(result.samples, exact) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "fast"}, "`objective` must be one of 'low_variance', 'naive'"),
        ({"n_epochs": 0}, "`n_epochs` must be an integer >= 1"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"lr": -1.0}, r"`lr` must be a finite number > 0, got -1.0"),
        ({"momentum": 1.0}, r"`momentum` must be in \[0, 1\), got 1.0"),
        ({"momentum": None}, r"`momentum` must be in \[0, 1\), got None"),
        ({"retries": -1}, "`retries` must be an integer >= 0"),
        ({"polyak": 5}, r"`polyak` must be in \(0, 1\] or None, got 5"),
        ({"polyak": 0.0}, r"`polyak` must be in \(0, 1\] or None"),
        ({"clip": -1}, "`clip` must be a finite number > 0 or None, got -1"),
        ({"clip": 0}, "`clip` must be a finite number > 0 or None, got 0"),
        ({"decay_fraction": -1}, r"`decay_fraction` must be in \(0, 1\]"),
        ({"lr_end": 0}, r"`lr_end` must be in \(0, 1\]"),
        ({"tol": 0}, "`tol` must be a finite number > 0"),
        ({"preconditioner_rank": -2}, "`preconditioner_rank` must be an integer >= 0"),
        ({"n_epochs": 2.5}, "`n_epochs` must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(**kwargs)


def test_error_estimate_is_the_energy_norm_error_when_the_preconditioner_is_exact():
    from linearised_laplace.solvers.cholesky import posterior_precision

    model = matrix_model(alpha=[0.05, 3.0], likelihood="regression")
    noise = draw_posterior_noise(model, 3, NoiseSource(0), progress=False)
    result = SGD(n_epochs=3, preconditioner_rank=8).solve(model, noise, progress=False)
    exact = closed_form(model, noise)
    h = posterior_precision(model)
    error = result.samples.double() - exact.double()
    energy = ((error @ h) * error).sum(-1).sqrt() / ((exact @ h) * exact).sum(-1).sqrt()
    torch.testing.assert_close(result.info.error_estimate.double(), energy, rtol=1e-6, atol=1e-12)
    assert result.info.checked is result.info.error_estimate
    assert result.info.converged == bool((energy <= 0.1).all())
