import pytest
import torch

import linearised_laplace as lla
from linearised_laplace import reference

from ..cases import classification_data, mlp, regression_data

QUIET = {"progress": False}


def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("g_prior", [False, True])
def test_full_rank_nystrom_reproduces_exact_at_the_training_inputs(g_prior):
    net = mlp(hidden=8)  # D = 59 > n·C = 45
    x, y = classification_data(15)
    kw = {"prior_precision": 1.5, "n_samples": 2, "g_prior": g_prior, **QUIET}
    exact = lla.ExactLaplace(net, **kw).fit((x, y))
    nystrom = lla.NystromLaplace(net, n_points=15, rank=45, **kw).fit((x, y))
    assert nystrom.basis.shape == (45, 59)
    torch.testing.assert_close(nystrom.basis @ nystrom.basis.T, torch.eye(45), atol=1e-10, rtol=0)
    assert _relative(nystrom.functional_variance(x), exact.functional_variance(x)) < 1e-6


def test_nystrom_elsewhere_differs_by_the_projection_onto_the_training_row_space():
    net = mlp(hidden=8)
    x, y = classification_data(15)
    nystrom = lla.NystromLaplace(
        net, n_points=15, rank=45, prior_precision=1.5, n_samples=2, **QUIET
    ).fit((x, y))
    jac = reference.jacobian(net, x).reshape(45, -1)
    projector = torch.linalg.pinv(jac) @ jac  # onto the row space of J_X
    torch.testing.assert_close(nystrom.basis.T @ nystrom.basis, projector, atol=1e-8, rtol=0)
    hess = nystrom.likelihood.hessian(net(x).detach())
    ggn = reference.ggn(reference.jacobian(net, x), hess)
    v = nystrom.basis
    cov_k = torch.linalg.inv(v @ ggn @ v.T + 1.5 * torch.eye(45))
    x_new = torch.randn(4, 3)
    psi = reference.jacobian(net, x_new) @ v.T
    assert _relative(nystrom.functional_variance(x_new), psi @ cov_k @ psi.transpose(1, 2)) < 1e-8
    exact = lla.ExactLaplace(net, prior_precision=1.5, n_samples=2, **QUIET).fit((x, y))
    assert _relative(nystrom.functional_variance(x_new), exact.functional_variance(x_new)) > 1e-3


def test_low_rank_basis_spans_the_top_ntk_eigenvectors():
    net = mlp(hidden=8)
    x, y = classification_data(40)
    nystrom = lla.NystromLaplace(net, n_points=20, rank=5, n_samples=2, **QUIET).fit((x, y))
    xm = x[nystrom.inducing_points]
    jac = reference.jacobian(net, xm).reshape(60, -1)
    values, vectors = torch.linalg.eigh(jac @ jac.T)
    torch.testing.assert_close(nystrom.eigenvalues, values.flip(0)[:5], rtol=1e-6, atol=0)
    top = (jac.T @ vectors[:, -5:]) / values[-5:].sqrt()  # [D, 5], orthonormal
    torch.testing.assert_close(nystrom.basis.T @ nystrom.basis, top @ top.T, atol=1e-6, rtol=0)


def test_nystrom_em_reaches_the_exact_fixed_point_in_feature_space():
    net = mlp(hidden=8, n_out=2)
    x, y = regression_data(40)
    la = lla.NystromLaplace(
        net, "regression", sigma_noise=0.5, n_points=30, rank=10, n_samples=2, **QUIET
    )
    la.optimize_prior_precision((x, y), max_iter=100, tol=1e-10, mean="tangent", update_sigma=False)
    psi = torch.einsum("ncd,kd->nck", reference.jacobian(net, x), la.basis).reshape(80, 10)
    ggn, rhs = psi.T @ psi / 0.25, psi.T @ y.reshape(-1) / 0.25
    mu = torch.linalg.eigvalsh(ggn)
    alpha = 1.0
    for _ in range(300):
        beta = torch.linalg.solve(ggn + alpha * torch.eye(10), rhs)
        alpha = float((mu / (mu + alpha)).sum() / (beta @ beta))
    assert abs(float(la.prior_precision) / alpha - 1) < 1e-6


def test_nystrom_round_trips_through_a_file(tmp_path):
    net = mlp(hidden=8)
    x, y = classification_data(30)
    la = lla.ELLA(net, n_points=20, rank=6, n_samples=3, **QUIET).fit((x, y))
    la.save(tmp_path / "ella.safetensors")
    loaded = lla.NystromLaplace.load(tmp_path / "ella.safetensors", mlp(hidden=8, seed=3))
    torch.testing.assert_close(loaded.functional_variance(x[:4]), la.functional_variance(x[:4]))
    torch.testing.assert_close(loaded.predictive_samples(x[:4]), la.predictive_samples(x[:4]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_points": 31}, "exceeds the 30 training points"),
        ({"n_points": 5, "rank": 16}, r"exceeds n_points·C = 5·3 = 15"),
        ({"prior_precision": [1.0, 1.0, 1.0, 1.0]}, "single `prior_precision`"),
        ({"rank": 0}, "`rank` must be an integer >= 1"),
    ],
)
def test_bad_nystrom_settings_raise(kwargs, match):
    x, y = classification_data(30)
    with pytest.raises(ValueError, match=match):
        lla.NystromLaplace(mlp(hidden=8), **QUIET, **kwargs).fit((x, y))
