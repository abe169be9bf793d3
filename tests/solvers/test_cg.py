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
