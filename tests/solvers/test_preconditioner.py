import pytest
import torch

from linearised_laplace import NoiseSource, draw_posterior_noise
from linearised_laplace.solvers.cholesky import posterior_precision
from linearised_laplace.solvers.preconditioner import with_ggn_sketch

from ..helpers import matrix_model


def _dense(apply, n):
    return apply(torch.eye(n)).T  # rows e_j ↦ columns of the operator


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_full_rank_ggn_sketch_makes_the_preconditioner_the_precision(likelihood):
    model = matrix_model(alpha=[0.05, 3.0], likelihood=likelihood)
    noise = with_ggn_sketch(model, draw_posterior_noise(model, 2, NoiseSource(0)), 8)
    assert noise.ggn_low_rank.rank == 8
    p = model.precision.preconditioner(noise.ggn_diag, noise.ggn_low_rank)
    h = posterior_precision(model)
    torch.testing.assert_close(_dense(p.solve, 8), torch.linalg.inv(h))
    ggn = h - torch.diag(model.precision.prior)
    sketch = model.precision.sketch(3)
    approx = sketch.vectors @ torch.diag(sketch.values) @ sketch.vectors.T
    assert float(torch.linalg.eigvalsh(ggn - approx).min()) > -1e-9


def test_sketch_is_kept_and_rescaled_not_recomputed():
    model = matrix_model()
    noise = with_ggn_sketch(model, draw_posterior_noise(model, 2, NoiseSource(0)), 4)
    assert with_ggn_sketch(model, noise, 3) is noise
    assert with_ggn_sketch(model, noise, 0) is noise
    torch.testing.assert_close(noise.ggn_low_rank.scaled(2.0).values, 2 * noise.ggn_low_rank.values)


def test_sketch_rank_is_capped_by_its_memory(monkeypatch):
    import linearised_laplace.solvers.preconditioner as preconditioner

    model = matrix_model()  # D = 8
    noise = draw_posterior_noise(model, 2, NoiseSource(0))
    monkeypatch.setattr(preconditioner, "SKETCH_BYTES", 4 * 8 * 8 * 13)  # width 13: rank 3
    assert with_ggn_sketch(model, noise, 100).ggn_low_rank.rank == 3
    monkeypatch.setattr(preconditioner, "SKETCH_BYTES", 4 * 8 * 8 * 5)  # no room: Jacobi
    assert with_ggn_sketch(model, noise, 100) is noise
