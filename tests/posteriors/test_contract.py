"""The posterior backend contract, checked on both backends against the dense closed forms.

A backend fits samples of ``N(0, H^{-1})``, gives the factor of ``J Σ Jᵀ``, runs EM's E-step (the
mean ``θ̄ = H^{-1} Φᵀ B y`` of the tangent Gaussian model and ``γ = tr(H^{-1} M)``), refits at the
end, scores a grid and follows new hyperparameters where it can. ``SampledPosterior`` runs with
the exact ``Cholesky`` solver in either space, so its samples equal the dense ones for the same
noise and its ``Σ`` (hence the factor and ``γ``) is exact; with ``CG`` it estimates both from its
samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.posteriors import Posterior
from linearised_laplace.solvers.mean import MeanMode

from ..helpers import dense_parts, matrix_model

BACKENDS = {
    "dense": lambda: lla.DensePosterior(),
    "sampled": lambda: lla.SampledPosterior(solver=lla.Cholesky(), space="primal"),
    "sampled-dual": lambda: lla.SampledPosterior(solver=lla.Cholesky(), space="dual"),
    "sampled-cg": lambda: lla.SampledPosterior(solver=lla.CG(rtol=1e-10), space="primal"),
}
ESTIMATED = ("sampled-cg",)  # Σ from samples; the others' is exact
CLOSE = {"rtol": 1e-8, "atol": 1e-10}


@dataclass
class State:
    """An EM state (the E-step's input)."""

    step: int
    precision: torch.Tensor
    sigma: float
    mean: torch.Tensor
    samples: torch.Tensor | None = None


def _model():
    return matrix_model(n=20, d=6, alpha=1.5, likelihood="regression")


def _closed_form(model):
    phi, hess, _, precision = dense_parts(model)
    ggn = precision - torch.diag(model.precision.prior)
    y = model.data.subset(torch.arange(len(model.data)))[1]
    mean = torch.linalg.solve(precision, torch.einsum("ncd,nce,ne->d", phi, hess, y))
    gamma = torch.trace(torch.linalg.solve(precision, ggn))
    return precision, mean, gamma


@pytest.mark.parametrize("name", BACKENDS)
def test_a_fit_draws_exact_samples_and_the_factor_gives_the_covariance(name):
    model, backend = _model(), BACKENDS[name]()
    assert isinstance(backend, Posterior)
    backend.fit(model, 400, seed=3, progress=False)
    dense = lla.DensePosterior()
    dense.fit(model, 400, seed=3, progress=False)
    torch.testing.assert_close(backend.samples, dense.samples, rtol=1e-7, atol=1e-8)
    x = torch.arange(5)
    half = backend.functional_factor(model.features, x)
    jac = model.features.to_dense(x)
    covariance = torch.linalg.inv(_closed_form(model)[0])
    exact = torch.einsum("acd,de,bfe->acbf", jac, covariance, jac)
    gram = torch.einsum("acr,bdr->acbd", half, half)
    if name not in ESTIMATED:
        torch.testing.assert_close(gram, exact, **CLOSE)
    else:  # the sample covariance of 400 exact samples: within a few Monte-Carlo errors
        error = float((gram - exact).norm() / exact.norm())
        assert error < 4 * math.sqrt(2 / 400) * 3


@pytest.mark.parametrize("name", BACKENDS)
def test_the_e_step_gives_the_tangent_mean_and_gamma(name):
    model, backend = _model(), BACKENDS[name]()
    precision, mean, gamma = _closed_form(model)
    anchor = torch.zeros(model.n_params)
    em = backend.expectation(model, MeanMode.TANGENT, anchor, seed=0, progress=False)
    result = em.step(State(0, model.prior.precision, 0.7, anchor))
    torch.testing.assert_close(result.mean, mean, rtol=1e-6, atol=1e-8)
    assert result.gamma.shape == (1,)
    if name not in ESTIMATED:
        assert not em.estimated and (result.samples is None) == (name == "dense")
        torch.testing.assert_close(float(result.gamma), float(gamma), **CLOSE)
    else:  # K = 8 function-space samples: standard error (2 Σ r² / K)^{1/2}
        assert em.estimated and result.samples.shape == (8, model.n_params)
        ratios = torch.linalg.eigvals(torch.linalg.solve(precision, precision - 1.5 * torch.eye(6)))
        error = math.sqrt(2 * float((ratios.real**2).sum()) / 8)
        assert abs(float(result.gamma) - float(gamma)) < 4 * error
    em.refit(State(1, torch.tensor([0.4]), 0.7, result.mean, result.samples), 5)
    assert backend.samples.shape == (5, model.n_params)
    assert torch.equal(backend.model.prior.precision, torch.tensor([0.4]))


@pytest.mark.parametrize("name", BACKENDS)
def test_grid_search_refits_at_the_index_it_returns(name):
    model, backend = _model(), BACKENDS[name]()
    backend.fit(model, 4, seed=0, progress=False)
    grid = torch.tensor([0.1, 1.0, 10.0])
    targets = {0.1: 3.0, 1.0: 1.0, 10.0: 2.0}  # a score with its minimum at α = 1
    calls = iter(grid.tolist())
    scores, index = backend.grid_search(
        model.features, torch.arange(3), grid, lambda half: targets[next(calls)], 0, False
    )
    assert (scores, index) == ([3.0, 1.0, 2.0], 1)
    assert torch.equal(backend.model.prior.precision, torch.tensor([1.0]))
    fresh = lla.DensePosterior()
    fresh.fit(model.with_prior(model.prior.with_precision(1.0)), 4, seed=0, progress=False)
    torch.testing.assert_close(backend.samples, fresh.samples, **CLOSE)


@pytest.mark.parametrize("name", BACKENDS)
def test_new_hyperparameters_are_followed_only_by_a_backend_that_holds_m(name):
    model, backend = _model(), BACKENDS[name]()
    backend.fit(model, 4, seed=0, progress=False)
    moved = backend.at(torch.tensor([0.3]), 0.5, seed=0, progress=False)
    assert moved == (name == "dense")
    if moved:
        fresh = lla.DensePosterior()
        fresh.fit(model.at(torch.tensor([0.3]), 0.5)[0], 4, seed=0, progress=False)
        torch.testing.assert_close(backend.samples, fresh.samples, **CLOSE)
    backend.forget()
    assert backend.samples is None and backend.model is None
