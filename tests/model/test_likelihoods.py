import math

import pytest
import torch

from linearised_laplace import Categorical, Gaussian
from linearised_laplace.model.likelihoods import make_likelihood


def _logits(n=5, c=4, scale=3.0):
    return scale * torch.randn(n, c, generator=torch.Generator().manual_seed(0))


def test_softmax_factor_reproduces_hessian():
    f = _logits()
    lik = Categorical()
    p = f.softmax(-1)
    hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(lik.hessian(f), hessian, rtol=0, atol=1e-12)
    factor = lik.factor(f)
    torch.testing.assert_close(factor @ factor.transpose(1, 2), hessian, rtol=0, atol=1e-12)
    v = torch.randn(3, 5, 4)
    torch.testing.assert_close(lik.factor_t_vec(f, v), torch.einsum("ndc,knd->knc", factor, v))


def test_gaussian_curvature():
    lik = Gaussian(0.5)
    f, v = _logits(), torch.randn(2, 5, 4)
    torch.testing.assert_close(lik.hessian(f), 4.0 * torch.eye(4).expand(5, 4, 4))
    torch.testing.assert_close(lik.factor_vec(f, v), 2.0 * v)
    torch.testing.assert_close(lik.factor_t_vec(f, v), 2.0 * v)


@pytest.mark.parametrize("lik", [Categorical(), Gaussian(0.7)])
def test_noise_target_solves_b_eps_equals_l_nu(lik):
    f = _logits()
    nu = torch.randn(3, 5, 4)
    eps = lik.noise_target(f, nu)
    torch.testing.assert_close(
        lik.hessian_vec(f, eps), lik.factor_vec(f, nu), rtol=1e-9, atol=1e-10
    )


def test_log_probs_match_torch_distributions():
    f = _logits()
    y = torch.tensor([0, 3, 1, 2, 2])
    expected = torch.distributions.Categorical(logits=f).log_prob(y)
    torch.testing.assert_close(Categorical().log_prob(f, y), expected)
    samples = torch.randn(3, 5, 4)
    torch.testing.assert_close(
        Categorical().log_prob(samples, y)[1], Categorical().log_prob(samples[1], y)
    )
    target = torch.randn(5, 4)
    normal = torch.distributions.Normal(f, 0.3).log_prob(target).sum(-1)
    torch.testing.assert_close(Gaussian(0.3).log_prob(f, target), normal)
    assert math.isclose(
        float(Gaussian(1.0).log_prob(torch.zeros(1, 1), torch.zeros(1))),
        -0.5 * math.log(2 * math.pi),
    )


@pytest.mark.parametrize(
    ("lik", "f", "y", "error", "match"),
    [
        (
            Categorical(),
            torch.zeros(3, 2),
            torch.tensor([0, 2, 1]),
            ValueError,
            r"labels must lie in \[0, 2\)",
        ),
        (
            Categorical(),
            torch.zeros(3, 2),
            torch.tensor([0, -1, 1]),
            ValueError,
            r"got labels in \[-1, 1\]",
        ),
        (Categorical(), torch.zeros(3, 2), torch.zeros(3), TypeError, "integer class labels"),
        (
            Categorical(),
            torch.zeros(3, 2),
            torch.zeros(3, 2).long(),
            ValueError,
            r"shape \[N\] = \[3\]",
        ),
        (Categorical(), torch.zeros(3, 1), torch.zeros(3).long(), ValueError, "C >= 2 outputs"),
        (Gaussian(), torch.zeros(3, 2), torch.zeros(3), ValueError, r"shape \[N, C\] = \[3, 2\]"),
        (
            Gaussian(),
            torch.zeros(3, 2),
            torch.zeros(3, 2).long(),
            TypeError,
            "must be floating point",
        ),
    ],
)
def test_bad_targets_raise(lik, f, y, error, match):
    with pytest.raises(error, match=match):
        lik.check_targets(f, y)


def test_single_output_regression_accepts_flat_targets():
    Gaussian().check_targets(torch.zeros(3, 1), torch.zeros(3))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_noise_raises(sigma):
    with pytest.raises(ValueError, match="`sigma_noise` must be finite and > 0"):
        Gaussian(sigma)


def test_make_likelihood():
    assert isinstance(make_likelihood("classification"), Categorical)
    assert make_likelihood("regression", 0.2).sigma == 0.2
    with pytest.raises(ValueError, match="'classification', 'regression'"):
        make_likelihood("poisson")
