"""The exact ``Σ`` of a dense solve, primal and dual, against ``H^{-1}`` formed densely."""

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.posteriors.gamma import exact_gamma
from linearised_laplace.solvers.auto import choose_solver, draw_samples
from linearised_laplace.solvers.covariance import (
    DualCovariance,
    PrimalCovariance,
    restore_covariance,
)

from ..helpers import dense_parts, matrix_model

CLOSE = {"rtol": 1e-8, "atol": 1e-10}
CASES = {  # a singular softmax B with n·C < D, and a Gaussian one with n·C > D
    "classification": lambda: matrix_model(n=4, c=3, d=20, alpha=[0.5, 3.0]),
    "regression": lambda: matrix_model(n=12, c=2, d=6, alpha=[0.5, 3.0], likelihood="regression"),
}


def _covariance(model, space):
    choice = choose_solver(model, lla.Cholesky(), space)
    return draw_samples(model, choice, 2, seed=0).covariance


@pytest.mark.parametrize("space", ["primal", "dual"])
@pytest.mark.parametrize("case", CASES)
def test_the_diagonal_factor_and_gamma_are_those_of_the_inverse_precision(case, space):
    model = CASES[case]()
    phi, _, _, precision = dense_parts(model)
    exact = torch.linalg.inv(precision)
    covariance = _covariance(model, space)
    assert isinstance(covariance, PrimalCovariance if space == "primal" else DualCovariance)
    torch.testing.assert_close(covariance.diagonal(), exact.diagonal(), **CLOSE)
    half = covariance.functional_factor(phi)  # [n, C, D]
    gram = torch.einsum("acr,bdr->acbd", half, half)
    torch.testing.assert_close(gram, torch.einsum("acd,de,bfe->acbf", phi, exact, phi), **CLOSE)
    prior, groups = model.precision.prior, model.prior.groups
    gamma = exact_gamma(covariance.diagonal(), prior, groups, 2)
    ggn_inverse = exact @ (precision - torch.diag(prior))  # H^{-1} M, per group's trace
    expected = torch.stack([ggn_inverse.diagonal()[groups == g].sum() for g in range(2)])
    torch.testing.assert_close(gamma, expected, **CLOSE)


@pytest.mark.parametrize("space", ["primal", "dual"])
def test_a_saved_covariance_is_restored_and_none_is_none(space):
    covariance = _covariance(CASES["classification"](), space)
    tensors = {"samples": torch.zeros(1), **covariance.tensors()}
    restored = restore_covariance(tensors, "cpu")
    assert type(restored) is type(covariance)
    torch.testing.assert_close(restored.diagonal(), covariance.diagonal(), rtol=0, atol=0)
    assert restore_covariance({"samples": torch.zeros(1), "factor": torch.eye(2)}, "cpu") is None


def test_an_iterative_solve_leaves_no_covariance():
    model = CASES["regression"]()
    choice = choose_solver(model, lla.CG(), "primal")
    assert draw_samples(model, choice, 2, seed=0).covariance is None
