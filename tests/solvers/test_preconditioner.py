import pytest
import torch

from linearised_laplace import NoiseSource, draw_posterior_noise
from linearised_laplace.solvers.cholesky import posterior_precision
from linearised_laplace.solvers.preconditioner import (
    LowRank,
    Preconditioner,
    ggn_nystrom,
    nystrom,
    precision_preconditioner,
    with_ggn_sketch,
)

from ..helpers import matrix_model


def _dense(apply, n):
    return apply(torch.eye(n)).T  # rows e_j ↦ columns of the operator


def test_factored_form_solves_and_has_a_square_root():
    gen = torch.Generator().manual_seed(0)
    diag = torch.rand(7, generator=gen) + 0.1
    vectors = torch.randn(7, 3, generator=gen)
    values = torch.tensor([5.0, 1.0, 0.2])
    p = Preconditioner.diagonal_plus_low_rank(diag, LowRank(vectors, values))
    dense = torch.diag(diag) + vectors @ torch.diag(values) @ vectors.T
    torch.testing.assert_close(_dense(p.solve, 7), torch.linalg.inv(dense))
    half, half_t = _dense(p.half, 7), _dense(p.half_t, 7)
    torch.testing.assert_close(half @ half.T, torch.linalg.inv(dense))
    torch.testing.assert_close(half_t, half.T)
    jacobi = Preconditioner.diagonal(diag)
    torch.testing.assert_close(_dense(jacobi.solve, 7), torch.diag(1 / diag))


def test_nystrom_is_exact_at_full_width_and_below_the_matrix_otherwise():
    gen = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(30, 30, generator=gen))[0]
    spectrum = 10.0 ** -torch.arange(30.0) * 100
    matrix = basis @ torch.diag(spectrum) @ basis.T
    full = nystrom(lambda z: z @ matrix, 30, 30)
    torch.testing.assert_close(full.vectors @ torch.diag(full.values) @ full.vectors.T, matrix)
    low = nystrom(lambda z: z @ matrix, 30, 5, oversample=5, generator=gen)
    approx = low.vectors @ torch.diag(low.values) @ low.vectors.T
    assert float(torch.linalg.eigvalsh(matrix - approx).min()) > -1e-10  # M_r ⪯ M
    torch.testing.assert_close(low.values, spectrum[:5], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_full_rank_ggn_sketch_makes_the_preconditioner_the_precision(likelihood):
    model = matrix_model(alpha=[0.05, 3.0], likelihood=likelihood)
    noise = with_ggn_sketch(model, draw_posterior_noise(model, 2, NoiseSource(0)), 8)
    assert noise.ggn_low_rank.rank == 8
    p = precision_preconditioner(model.prior_diag(), noise.ggn_diag, noise.ggn_low_rank)
    h = posterior_precision(model)
    torch.testing.assert_close(_dense(p.solve, 8), torch.linalg.inv(h))
    ggn = h - torch.diag(model.prior_diag())
    sketch = ggn_nystrom(model, 3)
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
