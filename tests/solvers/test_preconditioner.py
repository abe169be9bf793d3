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


def test_auto_ranks_start_at_100_grow_to_1600_and_are_capped():
    from linearised_laplace.solvers.preconditioner import SKETCH_BYTES, sketch_ranks

    assert sketch_ranks("auto", 10**5) == (100, 1600)
    assert sketch_ranks(40, 10**5) == (40, 40)
    assert sketch_ranks("auto", 50) == (50, 50)
    width = SKETCH_BYTES // (4 * 8 * 1000)  # a D whose sketch memory allows rank 990
    assert sketch_ranks("auto", 10**6, width) == (100, 990)


def test_auto_sketch_grows_where_the_whitened_ggn_is_large(monkeypatch):
    import linearised_laplace.solvers.preconditioner as preconditioner

    monkeypatch.setattr(preconditioner, "AUTO_RANKS", (2, 8))
    model = matrix_model(d=40, alpha=[1e-3, 1e-3])  # M ≫ A: every whitened eigenvalue is large
    noise = draw_posterior_noise(model, 2, NoiseSource(0))
    assert with_ggn_sketch(model, noise, "auto").ggn_low_rank.rank == 8
    monkeypatch.setattr(preconditioner, "RANK_SCALE", 1e-6)  # no doubling pays: it stays
    assert with_ggn_sketch(model, noise, "auto").ggn_low_rank.rank == 2


def test_a_doubling_pays_while_the_condition_bound_exceeds_the_squared_rank_ratio():
    from linearised_laplace.solvers.preconditioner import worth_growing

    assert worth_growing(100, 0.5) and not worth_growing(200, 2.9) and worth_growing(200, 3.1)
    assert worth_growing(400, 15.5) and not worth_growing(400, 14.5)
