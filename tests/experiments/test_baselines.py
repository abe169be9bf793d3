import pytest
import torch

from linearised_laplace.experiments import baselines, models


def test_ensemble_stacks_member_logits():
    nets = [models.build("mlp", (1, 8, 8), hidden=8) for _ in range(3)]
    x = torch.randn(5, 1, 8, 8)
    samples = baselines.ensemble_samples(nets, x)
    assert samples.shape == (3, 5, 10)
    torch.testing.assert_close(samples[1], nets[1](x))


def test_mc_dropout_is_seeded_leaves_the_model_alone_and_needs_dropout():
    torch.manual_seed(0)
    net = models.build("cnn", (1, 8, 8), width=4, dropout=0.5).eval()
    x = torch.randn(6, 1, 8, 8)
    state = torch.get_rng_state()
    a = baselines.mc_dropout_samples(net, x, 5, seed=1)
    b = baselines.mc_dropout_samples(net, x, 5, seed=1)
    assert torch.equal(a, b) and not torch.allclose(a[0], a[1])
    assert torch.equal(torch.get_rng_state(), state) and not net.training
    with pytest.raises(ValueError, match="needs a model with dropout"):
        baselines.mc_dropout_samples(models.build("cnn", (1, 8, 8), width=4), x, 2)
