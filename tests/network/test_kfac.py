"""KFAC factors from curvlinops on the linearisation's flat coordinates, against dense GGNs."""

import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

import linearised_laplace as lla
from linearised_laplace.model.data import Data

from ..cases import classification_data, image_data


def _kronecker(la, data):
    """The method's linear model (its dense GGN) and the KFAC approximation in its coordinates."""
    model = la.linear_model(data)
    return model, la.coordinates.kronecker(model.data, model.likelihood)


@pytest.mark.parametrize("bias", [True, False])
def test_kfac_is_exact_for_one_linear_layer_in_regression(bias):
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randn(40, 3)
    la = lla.SampledLaplace(nn.Linear(5, 3, bias=bias), "regression", sigma_noise=0.4)
    model, kfac = _kronecker(la, (x, y))
    assert kfac.uncovered == () and len(kfac.blocks) == 1
    torch.testing.assert_close(kfac.matvec(torch.eye(model.n_params)), model.dense_ggn())


def test_blocks_sit_on_the_flat_coordinates_as_curvlinops_orders_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3))
    x, y = image_data(20)
    la = lla.SampledLaplace(net)
    model, kfac = _kronecker(la, (x, y))
    reference = KFACLinearOperator(
        net,
        nn.CrossEntropyLoss(reduction="sum"),
        list(net.parameters()),
        [(x, y)],
        fisher_type="type-2",
        check_deterministic=False,
        separate_weight_and_bias=False,
    )
    v = torch.randn(model.n_params)
    torch.testing.assert_close(kfac.matvec(v[None])[0], reference @ v)


def test_the_g_prior_sees_kfac_in_its_scaled_coordinates():
    torch.manual_seed(0)
    x, y = classification_data(30)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    plain = _kronecker(lla.SampledLaplace(net), (x, y))[1]
    la = lla.SampledLaplace(net, g_prior=True)
    _, scaled = _kronecker(la, (x, y))
    s = la.scale
    eye = torch.eye(len(s))
    expected = s[:, None] * plain.matvec(eye) * s[None, :]
    torch.testing.assert_close(scaled.matvec(eye), expected)


def test_a_layer_kfac_does_not_cover_warns_and_is_left_to_the_diagonal():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).eval()
    x, y = classification_data(30)
    la = lla.SampledLaplace(net)
    with pytest.warns(UserWarning, match=r"1\.weight, 1\.bias fall back to the diagonal"):
        model, kfac = _kronecker(la, (x, y))
    assert kfac.uncovered == ("1.weight", "1.bias")
    assert kfac.covered().tolist() == [True] * 16 + [False] * 8 + [True] * 15


def test_without_a_kfac_loss_there_is_no_kfac():
    class Poisson(lla.Gaussian):
        def kfac_loss(self):
            return None

    x, y = torch.randn(10, 3), torch.randn(10, 2)
    la = lla.SampledLaplace(nn.Linear(3, 2), Poisson(1.0))
    model = la.linear_model((x, y))
    with pytest.warns(UserWarning, match="no KFAC loss.*Jacobi"):
        assert la.coordinates.kronecker(Data((x, y)), model.likelihood) is None


def test_kfac_preconditioned_samples_equal_the_exact_ones():
    torch.manual_seed(0)
    x, y = classification_data(40)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3))
    kw = {"prior_precision": 0.5, "n_samples": 3, "progress": False}
    solver = lla.CG(preconditioner="kfac")
    la = lla.SampledLaplace(net, solver=solver, space="primal", **kw).fit((x, y))
    exact = lla.ExactLaplace(net, **kw).fit((x, y))
    error = float((la.sample() - exact.sample()).norm() / exact.sample().norm())
    assert error < 1e-7 and la.solve_info.converged


def test_cg_with_exact_kfac_takes_one_iteration():
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randn(40, 3)
    kw = {"sigma_noise": 0.4, "n_samples": 2, "progress": False}
    solver = lla.CG(preconditioner="kfac")
    la = lla.SampledLaplace(nn.Linear(5, 3), "regression", solver=solver, space="primal", **kw)
    assert la.fit((x, y)).solve_info.n_steps == 1  # P = H: KFAC is exact here
