"""``PosteriorPrecision`` against its dense twin ``A + Φᵀ B Φ``."""

import pytest
import torch

from linearised_laplace.core.lowrank import Preconditioner

from ..helpers import dense_parts, matrix_model


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_the_operator_is_a_plus_m(likelihood):
    model = matrix_model(alpha=[0.5, 4.0], likelihood=likelihood)
    precision = dense_parts(model)[3]
    h = model.precision
    torch.testing.assert_close(h.prior, torch.tensor([0.5] * 4 + [4.0] * 4))
    assert h.prior64.dtype == torch.float64 and h.n_params == 8
    z = torch.randn(3, 8)
    torch.testing.assert_close(h.matvec(z), z @ precision)
    torch.testing.assert_close(h.dense(model.dense_ggn()), precision)
    assert model.precision is h  # built once per model, i.e. per hyperparameter value
    assert model.at(torch.tensor([1.0, 2.0]), 1.0)[0].precision is not h


def test_the_jacobi_preconditioner_adds_the_ggn_diagonal_to_the_prior():
    model = matrix_model(alpha=2.0)
    ggn_diag = model.dense_ggn().diagonal()
    p = model.precision.preconditioner(ggn_diag)
    expected = Preconditioner.diagonal(2.0 + ggn_diag)
    torch.testing.assert_close(p.inv_sqrt_diag, expected.inv_sqrt_diag)
    assert p.rank == 0


def test_a_full_rank_sketch_is_the_ggn():
    model = matrix_model(alpha=[0.05, 3.0])
    sketch = model.precision.sketch(8)
    approx = sketch.vectors @ torch.diag(sketch.values) @ sketch.vectors.T
    torch.testing.assert_close(approx, model.dense_ggn(), rtol=1e-6, atol=1e-8)
