import pytest
import torch

from linearised_laplace import Cholesky, NoiseSource, draw_posterior_noise, reference
from linearised_laplace.solvers.cholesky import cholesky

from ..helpers import dense_parts, matrix_model, relative_error


def closed_form(model, noise):
    """``H⁻¹(A θ₀ + Φᵀ L ν)`` from dense matrices and the regenerated per-point noise."""
    phi, hess, factor, _ = dense_parts(model)
    idx = torch.arange(len(model.data))
    nu = noise.source.points(idx, noise.n_samples, phi.shape[1], dtype=phi.dtype, device="cpu")
    return reference.sto_closed_form(phi, factor, model.precision.prior, noise.xi, nu, hess)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_cholesky_samples_equal_the_closed_form(likelihood):
    model = matrix_model(likelihood=likelihood, alpha=[0.5, 3.0])
    noise = draw_posterior_noise(model, 5, NoiseSource(0), progress=False)
    result = Cholesky().solve(model, noise)
    assert relative_error(result.samples, closed_form(model, noise)) < 1e-12
    assert float(result.info.rel_residual.max()) < 1e-12 and result.info.n_steps == 0


def test_cholesky_failure_says_what_to_do():
    with pytest.raises(torch.linalg.LinAlgError, match="Increase `prior_precision`"):
        cholesky(-torch.eye(3))
