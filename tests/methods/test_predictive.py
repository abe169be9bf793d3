"""The predictive's per-point (co)variances, formed over chunks of the inputs."""

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.methods import predictive

from ..cases import mlp, regression_data

METHODS = {
    "exact": lambda net: lla.ExactLaplace(net, "regression", progress=False),
    "sampled-dense": lambda net: lla.SampledLaplace(net, "regression", progress=False),
    "sampled-cg": lambda net: lla.SampledLaplace(
        net, "regression", solver=lla.CG(), n_samples=6, progress=False
    ),
}


@pytest.mark.parametrize("name", METHODS)
def test_chunks_of_the_inputs_give_the_whole_batch_s_variances(name, monkeypatch):
    net = mlp(n_out=2)
    x, y = regression_data(30)
    la = METHODS[name](net).fit((x, y))
    whole = la.functional_variance(x[:7]), la(x[:7], diagonal_output=True)[1]
    monkeypatch.setattr(predictive, "FACTOR_FLOATS", 1)  # one point per chunk
    chunked = la.functional_variance(x[:7]), la(x[:7], diagonal_output=True)[1]
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert whole[0].shape == (7, 2, 2) and whole[1].shape == (7, 2)


def test_each_input_s_factor_is_formed_once_and_one_input_works(monkeypatch):
    net = mlp(n_out=2)
    x, y = regression_data(30)
    la = METHODS["sampled-cg"](net).fit((x, y))
    whole = la.functional_variance(x[:5])
    rows, original = [], type(la)._functional_factor

    def counted(self, inputs):
        rows.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(type(la), "_functional_factor", counted)
    torch.testing.assert_close(la.functional_variance(x[:5]), whole, rtol=0, atol=0)
    assert sum(rows) == 5  # the first point, which sizes the chunks, is not formed again
    torch.testing.assert_close(la.functional_variance(x[:1]), whole[:1], rtol=1e-12, atol=1e-15)
