"""The laplace-torch peers: our joint function samples carry laplace-torch's own covariance.

Skipped where laplace-torch is not installed (``make peers`` installs it).
"""

from __future__ import annotations

import pytest
import torch

from linearised_laplace.experiments.models import ResNet
from linearised_laplace.experiments.peers import fit_laplace_torch, function_sampler

from ..cases import image_data, mlp, warm_batchnorm

pytest.importorskip("laplace")

N_SAMPLES = 4000


def _network(architecture: str):
    x, y = image_data(48)
    if architecture == "mlp":  # an nn.Sequential: BackPACK's GGN
        net = torch.nn.Sequential(torch.nn.Flatten(), mlp(n_in=36, hidden=6))
    else:  # BatchNorm and skip connections: ASDL's GGN for all weights
        torch.manual_seed(0)
        net = warm_batchnorm(ResNet((1, 6, 6), classes=3, width=2), x)
    return net, (x, y)


@pytest.mark.parametrize("method", ["lt-diag-marglik", "lt-lastlayer-val", "lt-subnet-marglik"])
@pytest.mark.parametrize("architecture", ["mlp", "resnet"])
def test_function_samples_have_laplace_torch_covariance(method, architecture):
    net, train = _network(architecture)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    la = fit_laplace_torch(method, net, train, train, subnetwork_size=20)
    x = train[0][:3]
    torch.manual_seed(1)
    f = function_sampler(la, net, N_SAMPLES)(x).detach()  # [S, 3, C]
    mean, covariance = la._glm_predictive_distribution(x, joint=True)
    flat = f.reshape(N_SAMPLES, -1)
    centred = flat - flat.mean(0)
    empirical = centred.T @ centred / (N_SAMPLES - 1)
    variance = covariance.diagonal()
    # Monte-Carlo standard errors of a Gaussian sample mean and covariance
    mean_error = (variance / N_SAMPLES).sqrt()
    cov_error = ((variance[:, None] * variance[None, :] + covariance**2) / N_SAMPLES).sqrt()
    assert (flat.mean(0) - mean).abs().le(5 * mean_error + 1e-5).all()
    assert (empirical - covariance).abs().le(5 * cov_error + 1e-6).all()
    assert variance.max() > 1e-3  # a posterior with spread, not the MAP
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_kfac_on_a_batchnorm_resnet_says_what_to_use_instead():
    net, train = _network("resnet")
    with pytest.raises(NotImplementedError, match="Use lt-diag-"):
        fit_laplace_torch("lt-kron-marglik", net, train, train)
