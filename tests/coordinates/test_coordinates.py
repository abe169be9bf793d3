"""Coordinates against dense maths: the g-prior scale, a ranked subnetwork, a Nyström basis."""

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace import reference
from linearised_laplace.coordinates.coordinates import Coordinates
from linearised_laplace.coordinates.ntk_basis import Basis
from linearised_laplace.coordinates.ranking import Ranking

from ..cases import classification_data, mlp


def _fitted(**kw):
    net = mlp()  # D = 38
    x, y = classification_data(20)
    coords = Coordinates(lla.Linearisation(net), **kw)
    prior = lla.make_prior(1.0, torch.zeros(38, dtype=torch.long), ["θ"])
    coords.fit(lla.Data((x, y)), lla.Categorical(), prior, seed=0, progress=False)
    return net, x, coords


def _check_maps(coords, x, p, anchor):
    """``features = J P``, ``to_parameters(z) = P z``, ``P Σ Pᵀ`` and the anchor ``θ*``."""
    k = p.shape[1]
    z = torch.randn(4, k, generator=torch.Generator().manual_seed(3))
    cov = torch.cov(torch.randn(k, k + 3, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(coords.to_parameters(z), z @ p.T)
    torch.testing.assert_close(coords.covariance_to_parameters(cov), p @ cov @ p.T)
    torch.testing.assert_close(coords.anchor(), anchor)
    jac = reference.jacobian(coords.linearisation.model, x)  # all weights
    if coords.linearisation.selection.indices is not None:
        jac = jac[:, :, coords.linearisation.selection.indices]
    torch.testing.assert_close(coords.features().to_dense(x), jac @ p)
    assert coords.dim == k


def test_scale_maps_through_diag_s():
    _, x, coords = _fitted(g_prior=True)
    s, theta = coords.scale, coords.linearisation.theta_star
    _check_maps(coords, x, torch.diag(s), theta / s)
    h = torch.cov(torch.randn(38, 50, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(coords.precision_to_parameters(h), h / s[:, None] / s[None, :])


def test_ranked_subnetwork_selects_the_top_weights_by_magnitude():
    net, x, coords = _fitted(ranking=Ranking("magnitude", 7))
    indices = coords.linearisation.selection.indices
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert set(indices.tolist()) == set(theta.abs().topk(7).indices.tolist())
    assert coords.ranking is None  # resolved once, at the first fit
    _check_maps(coords, x, torch.eye(7), theta[indices])


@pytest.mark.parametrize("g_prior", [False, True])
def test_nystrom_basis_maps_through_diag_s_vt(g_prior):
    _, x, coords = _fitted(g_prior=g_prior, basis=Basis(n_points=10, rank=6))
    v = coords.basis
    torch.testing.assert_close(v @ v.T, torch.eye(6), atol=1e-10, rtol=0)
    s = torch.ones(38) if coords.scale is None else coords.scale
    theta = coords.linearisation.theta_star
    _check_maps(coords, x, s[:, None] * v.T, v @ (theta / s))  # P = diag(s) Vᵀ
    with pytest.raises(ValueError, match="degenerate outside the Nyström basis"):
        coords.precision_to_parameters(torch.eye(6))


def test_output_map_is_applied_to_the_likelihood_features_only():
    a = torch.randn(2, 3, generator=torch.Generator().manual_seed(6))
    net, x, coords = _fitted(output_map=(lambda f: f @ a.T, lambda u: u @ a))
    jac = reference.jacobian(net, x)
    torch.testing.assert_close(coords.observed().to_dense(x), a @ jac)
    torch.testing.assert_close(coords.transform(coords.linearisation).to_dense(x), jac)
