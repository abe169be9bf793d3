import pytest
import torch

from linearised_laplace import CG, NoiseSource, draw_posterior_noise

from ..helpers import matrix_model, relative_error
from .test_exact import closed_form


def test_cg_samples_equal_the_closed_form():
    model = matrix_model(alpha=[0.5, 3.0])
    noise = draw_posterior_noise(model, 4, NoiseSource(0), progress=False)
    result = CG(rtol=1e-12).solve(model, noise)
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-8
    assert 0 < result.info.n_steps <= 40
    assert float(result.info.rel_residual.max()) < 1e-12


def test_cg_warm_start_from_the_solution_stops_at_once():
    model = matrix_model()
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    result = CG(rtol=1e-8).solve(model, noise, init=exact)
    assert result.info.n_steps == 0
    torch.testing.assert_close(result.samples, exact)


def test_cg_warns_when_it_stops_at_max_iter_above_rtol():
    model = matrix_model(alpha=[0.5, 3.0])
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    with pytest.warns(UserWarning, match="max_iter=2 with relative residual .* Raise max_iter"):
        CG(rtol=1e-12, max_iter=2).solve(model, noise)


def test_cg_starts_from_zero_when_the_warm_start_is_worse():
    model = matrix_model()
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    cold = CG(rtol=1e-10).solve(model, noise)
    bad = CG(rtol=1e-10).solve(model, noise, init=-50 * exact)
    assert bad.info.n_steps == cold.info.n_steps
    assert relative_error(bad.samples, exact) < 1e-7
