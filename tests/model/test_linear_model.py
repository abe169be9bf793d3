import copy

import pytest
import torch

from linearised_laplace import (
    Categorical,
    Data,
    Gaussian,
    LinearGaussianModel,
    Linearisation,
    MatrixFeatures,
    NoiseSource,
    draw_posterior_noise,
    make_prior,
    reference,
)
from linearised_laplace.solvers.mean import MeanMode, MeanProblem

from ..cases import classification_data, mlp
from ..helpers import dense_parts, matrix_model


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_products_match_dense_matrices(likelihood):
    model = matrix_model(likelihood=likelihood, alpha=[0.5, 3.0])
    phi, hess, _, precision = dense_parts(model)
    z = torch.randn(4, model.n_params)
    idx = torch.tensor([3, 9, 1])
    _, ggn_z = model.ggn_vec(idx, z)
    torch.testing.assert_close(
        ggn_z, z @ torch.einsum("ncd,nce,nef->df", phi[idx], hess[idx], phi[idx])
    )
    torch.testing.assert_close(model.precision.matvec(z), z @ precision)
    ggn = precision - torch.diag(model.precision.prior)
    torch.testing.assert_close(model.dense_ggn(), ggn)
    torch.testing.assert_close(model.function_norms(z), torch.einsum("kd,de,ke->k", z, ggn, z))
    assert model.n_outputs == 3


def test_network_ggn_matches_reference():
    net = mlp()
    x, y = classification_data(9)
    lin = Linearisation(net)
    model = LinearGaussianModel(
        lin,
        Gaussian(0.5),
        make_prior(1.0, lin.selection.group_ids, lin.selection.names),
        Data((x, y), 4),
    )
    jac = reference.jacobian(net, x)
    hess = torch.eye(3).expand(9, 3, 3) / 0.25
    torch.testing.assert_close(model.dense_ggn(), reference.ggn(jac, hess))


def test_float32_network_ggn_is_summed_in_float64():
    """A float32 network's GGN: float32 products per batch, summed over batches in float64."""
    net = mlp()
    x, y = classification_data(40)
    lin = Linearisation(net.float())
    prior = make_prior(1.0, lin.selection.group_ids, lin.selection.names)
    model = LinearGaussianModel(lin, Categorical(), prior, Data((x.float(), y), 8))
    ggn = model.dense_ggn()
    assert ggn.dtype == torch.float64 and torch.equal(ggn, ggn.T)
    net64 = copy.deepcopy(net).double()
    probs = net64(x).softmax(-1)
    hess = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    expected = reference.ggn(reference.jacobian(net64, x), hess)
    torch.testing.assert_close(ggn, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_dense_features_reproduce_the_network_model():
    net = mlp()
    x, y = classification_data(11)
    lin = Linearisation(net)
    prior = make_prior(2.0, lin.selection.group_ids, lin.selection.names)
    model = LinearGaussianModel(lin, Categorical(), prior, Data((x, y), 4))
    dense = model.with_dense_features()
    assert isinstance(dense.features, MatrixFeatures)
    torch.testing.assert_close(dense.features.matrix, reference.jacobian(net, x))
    torch.testing.assert_close(dense.dense_ggn(), model.dense_ggn())
    z = torch.randn(3, model.n_params)
    torch.testing.assert_close(dense.precision.matvec(z), model.precision.matvec(z))
    for mode in (MeanMode.TANGENT, MeanMode.AFFINE):
        grads = [MeanProblem(m, mode, lin.theta_star).gradient(z[0])[0] for m in (model, dense)]
        torch.testing.assert_close(*grads)
    noise = [
        draw_posterior_noise(m, 2, NoiseSource(5)).rhs(model.precision.prior)
        for m in (model, dense)
    ]
    torch.testing.assert_close(*noise)
    assert model.with_dense_features(limit_gib=1e-9) is model


def test_check_batch_rejects_non_finite_values():
    model = matrix_model(likelihood="regression")
    f0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="training inputs contain 1 non-finite"):
        model.check_batch(torch.tensor([0.0, float("nan")]), torch.zeros(2, 3), f0)
    with pytest.raises(ValueError, match="training targets contain 3 non-finite"):
        model.check_batch(torch.zeros(2), torch.full((2, 3), float("inf")).tril(), f0)


def test_dense_ggn_refuses_what_does_not_fit():
    big = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (2, 100_000))
    model = LinearGaussianModel(
        MatrixFeatures(big),
        Gaussian(),
        make_prior(1.0, torch.zeros(100_000, dtype=torch.long), ["w"]),
        Data((torch.arange(2), torch.zeros(2))),
    )
    with pytest.raises(MemoryError, match=r"needs 74\.5 GiB .* linearise fewer parameters"):
        model.dense_ggn()
