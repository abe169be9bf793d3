import pytest
import torch

from linearised_laplace import (
    CG,
    ConvergenceError,
    ConvergenceWarning,
    NoiseSource,
    draw_posterior_noise,
)
from linearised_laplace.solvers.base import check_convergence

from ..helpers import matrix_model, relative_error
from .test_cholesky import closed_form


@pytest.mark.parametrize("block", [False, True])
def test_cg_samples_equal_the_closed_form(block):
    model = matrix_model(alpha=[0.5, 3.0])
    noise = draw_posterior_noise(model, 4, NoiseSource(0), progress=False)
    result = CG(rtol=1e-12, block=block).solve(model, noise)
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-8
    assert 0 < result.info.n_steps <= 40
    assert float(result.info.rel_residual.max()) < 1e-12


@pytest.mark.parametrize("block", [False, True])
def test_cg_warm_start_from_the_solution_stops_at_once(block):
    model = matrix_model()
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    result = CG(rtol=1e-8, block=block).solve(model, noise, init=exact)
    assert result.info.n_steps == 0
    torch.testing.assert_close(result.samples, exact)


def test_cg_stopped_at_max_iter_is_reported_unconverged_and_the_check_warns():
    model = matrix_model(alpha=[0.5, 3.0])
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    result = CG(rtol=1e-12, max_iter=2, preconditioner_rank=0).solve(model, noise)
    assert result.info.n_steps == 2 and not result.info.converged
    with pytest.warns(ConvergenceWarning, match=r"2 of 2 samples .* Raise lla.CG\(max_iter"):
        check_convergence(result.info, CG.advice)
    with pytest.raises(ConvergenceError, match="tolerance 1e-12"):
        check_convergence(result.info, CG.advice, strict=True)


def test_cg_starts_from_zero_when_the_warm_start_is_worse():
    model = matrix_model()
    noise = draw_posterior_noise(model, 2, NoiseSource(0), progress=False)
    exact = closed_form(model, noise)
    cold = CG(rtol=1e-10).solve(model, noise)
    bad = CG(rtol=1e-10).solve(model, noise, init=-50 * exact)
    assert bad.info.n_steps == cold.info.n_steps
    assert relative_error(bad.samples, exact) < 1e-7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": -1}, "CG `rtol` must be a finite number > 0 or None, got -1"),
        ({"rtol": 0}, "CG `rtol` must be a finite number > 0"),
        ({"max_iter": 0}, "CG `max_iter` must be an integer >= 1, got 0"),
        ({"preconditioner_rank": -1}, 'CG `preconditioner_rank` must be "auto" or an integer >= 0'),
        ({"preconditioner_rank": "big"}, "an integer >= 0, got 'big'"),
        ({"preconditioner_rank": 2.5}, "an integer >= 0, got 2.5"),
        ({"block": "yes"}, "CG `block` must be True or False, got 'yes'"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CG(**kwargs)


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("rank", [0, 3, 8])
def test_nystrom_preconditioned_cg_equals_the_closed_form(rank, block):
    model = matrix_model(alpha=[0.05, 0.3], likelihood="regression")
    noise = draw_posterior_noise(model, 3, NoiseSource(0), progress=False)
    result = CG(rtol=1e-12, preconditioner_rank=rank, block=block).solve(model, noise)
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-9
    if rank == 8:  # a full-rank sketch of M makes P = H: one iteration, up to round-off
        assert result.info.n_steps <= 2


def test_a_numpy_integer_rank_is_kept_as_an_int():
    import numpy as np

    assert CG(preconditioner_rank=np.int64(200)).preconditioner_rank == 200
