import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from linearised_laplace import metrics


def _samples(s=50, n=12, c=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(s, n, c, generator=gen), torch.randint(0, c, (n,), generator=gen)


def test_marginal_is_log_mean_exp_not_mean_log():
    f, y = _samples()
    p = f.softmax(-1)[:, torch.arange(12), y]  # [S, N]
    torch.testing.assert_close(metrics.marginal_log_likelihood(f, y), p.mean(0).log())
    assert bool((metrics.marginal_log_likelihood(f, y) >= p.log().mean(0)).all())  # Jensen


def test_joint_of_one_point_is_the_marginal_and_tuples_share_samples():
    f, y = _samples()
    torch.testing.assert_close(
        metrics.joint_log_likelihood(f, y, 1).sort().values,
        metrics.marginal_log_likelihood(f, y).sort().values,
    )
    joint = metrics.joint_log_likelihood(f, y, 5, seed=3)
    assert joint.shape == (2,)  # 12 points → two 5-tuples, 2 left out
    order = torch.randperm(12, generator=metrics.seeded_generator(3, "joint", 5))[:10].reshape(2, 5)
    p = f.softmax(-1)[:, torch.arange(12), y]
    expected = torch.stack([p[:, t].prod(1).mean().log() for t in order])
    torch.testing.assert_close(joint, expected)


def test_deterministic_predictions_make_joint_the_sum_of_marginals():
    f, y = _samples(s=1)
    marginal = metrics.marginal_log_likelihood(f.expand(7, -1, -1), y)
    joint = metrics.joint_log_likelihood(f.expand(7, -1, -1), y, 3)
    torch.testing.assert_close(
        joint.sum(),
        marginal.sum()
        - marginal[
            torch.randperm(12, generator=metrics.seeded_generator(0, "joint", 3))[12:]
        ].sum(),
    )


def test_dyadic_joint_matches_its_definition():
    f, y = _samples(n=10)
    scores = metrics.dyadic_joint_log_likelihood(f, y, kappa=10, seed=1)
    gen = metrics.seeded_generator(1, "dyadic", 10)
    pairs = torch.randperm(10, generator=gen).reshape(2, -1)
    copies = torch.randint(1, 10, (5,), generator=gen)
    assert int(copies.min()) >= 1 and int(copies.max()) <= 9
    logp = f.log_softmax(-1)[:, torch.arange(10), y]
    expected = torch.logsumexp(
        copies * logp[:, pairs[0]] + (10 - copies) * logp[:, pairs[1]], 0
    ) - math.log(50)
    torch.testing.assert_close(scores, expected)


def test_accuracy_brier_and_calibration_on_known_values():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1, 1])
    assert metrics.accuracy(probs, y) == 0.75
    assert math.isclose(metrics.brier_score(probs, y), (0.02 + 0.72 + 0.08 + 0.18) / 4)
    # one point per bin of width 0.1: |1 − 0.9|, |0 − 0.6|, |1 − 0.8|, |1 − 0.7|
    assert math.isclose(metrics.expected_calibration_error(probs, y, n_bins=10), 1.2 / 4)
    # a single bin holds all: accuracy 0.75 equals mean confidence 0.75
    assert math.isclose(metrics.expected_calibration_error(probs, y, n_bins=2), 0.0, abs_tol=1e-12)


def test_ood_auroc_matches_scikit_learn_with_ties():
    gen = torch.Generator().manual_seed(0)
    probs_in = torch.softmax(3 * torch.randn(30, 5, generator=gen), -1)
    probs_out = torch.softmax(torch.randn(20, 5, generator=gen), -1)
    probs_out[:5] = probs_in[:5]  # ties
    h = torch.cat([metrics.predictive_entropy(probs_in), metrics.predictive_entropy(probs_out)])
    expected = roc_auc_score([0] * 30 + [1] * 20, h.numpy())
    assert math.isclose(metrics.ood_auroc(probs_in, probs_out), expected, rel_tol=1e-12)


def test_gaussian_log_likelihood():
    mean, y = torch.randn(5, 2), torch.randn(5, 2)
    a = torch.randn(5, 2, 2)
    cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(2)
    expected = torch.distributions.MultivariateNormal(mean, cov + 0.09 * torch.eye(2)).log_prob(y)
    torch.testing.assert_close(
        metrics.gaussian_log_likelihood(mean, cov, y, sigma_noise=0.3), expected
    )
    var = torch.rand(5, 2) + 0.1
    diag = torch.distributions.Normal(mean, var.sqrt()).log_prob(y).sum(-1)
    torch.testing.assert_close(metrics.gaussian_log_likelihood(mean, var, y), diag)


def test_patch_likelihood_converges_to_the_exact_gaussian_likelihood():
    # R10(a): samples from the exact covariance; the sample-covariance LL → exact LL (bias O(p²/K)).
    h, w, p = 6, 6, 3
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(h * w, h * w, generator=gen) / 6
    cov = a @ a.T + 0.05 * torch.eye(h * w)
    mean, truth = torch.randn(h, w, generator=gen), torch.randn(h, w, generator=gen)
    exact = 0.0
    for top in range(0, h, p):
        for left in range(0, w, p):
            pix = torch.tensor([(top + i) * w + left + j for i in range(p) for j in range(p)])
            block = torch.distributions.MultivariateNormal(torch.zeros(p * p), cov[pix][:, pix])
            exact += float(block.log_prob((truth - mean).reshape(-1)[pix]))
    exact /= h * w
    errors = []
    for k in (100, 10_000, 200_000):
        samples = (torch.linalg.cholesky(cov) @ torch.randn(h * w, k, generator=gen)).T.reshape(
            k, h, w
        )
        errors.append(
            abs(metrics.patch_log_likelihood(samples, mean, truth, p, jitter=0.0) - exact)
        )
    assert errors[-1] < 2e-3 and errors[-1] < errors[0]
    marginal = metrics.patch_log_likelihood(samples, mean, truth, 1, jitter=0.0)
    normal = torch.distributions.Normal(torch.zeros(h * w), cov.diagonal().sqrt())
    assert abs(marginal - float(normal.log_prob((truth - mean).reshape(-1)).mean())) < 2e-3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: metrics.marginal_log_likelihood(torch.zeros(3, 4, 2), torch.zeros(5).long()),
            r"`y` must have shape \[N\] = \[4\]",
        ),
        (
            lambda: metrics.marginal_log_likelihood(torch.zeros(4, 2), torch.zeros(4).long()),
            r"shape \[S, N, C\]",
        ),
        (
            lambda: metrics.joint_log_likelihood(torch.zeros(3, 4, 2), torch.zeros(4).long(), 5),
            r"integer in \[1, 4\]",
        ),
        (
            lambda: metrics.dyadic_joint_log_likelihood(
                torch.zeros(3, 4, 2), torch.zeros(4).long(), 1
            ),
            "kappa >= 2",
        ),
        (
            lambda: metrics.accuracy(torch.zeros(4, 2), torch.zeros(3).long()),
            r"`y` must have shape \[N\] = \[4\]",
        ),
        (
            lambda: metrics.gaussian_log_likelihood(
                torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 2)
            ),
            "covariance",
        ),
        (
            lambda: metrics.patch_log_likelihood(
                torch.zeros(2, 4, 4), torch.zeros(4, 4), torch.zeros(4, 4), 5
            ),
            r"integer in \[1, 4\]",
        ),
        (
            lambda: metrics.patch_log_likelihood(
                torch.zeros(2, 4, 4), torch.zeros(4, 5), torch.zeros(4, 5), 2
            ),
            r"samples \[S, H, W\]",
        ),
        (lambda: metrics.ood_auroc(torch.zeros(0, 2), torch.ones(3, 2) / 2), "at least one"),
    ],
)
def test_bad_metric_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_patch_size_that_does_not_fit_the_image_raises():
    samples, mean = torch.zeros(4, 6, 6), torch.zeros(6, 6)
    for bad in (0, 7, 2.5):
        with pytest.raises(ValueError, match=r"`patch_size` must be an integer in \[1, 6\]"):
            metrics.patch_log_likelihood(samples, mean, mean, bad)
    with pytest.raises(ValueError, match=r"Expected samples \[S, H, W\]"):
        metrics.patch_log_likelihood(samples, mean, torch.zeros(5, 6), 2)


def test_shrinkage_halves_the_off_diagonal_and_keeps_few_samples_finite():
    gen = torch.Generator().manual_seed(1)
    samples = torch.randn(200_000, 2, 2, generator=gen) * torch.tensor([[1.0, 2.0], [0.5, 1.5]])
    samples[:, 0, 1] += samples[:, 0, 0]  # correlated pixels
    mean, truth = torch.zeros(2, 2), torch.tensor([[0.3, -1.0], [0.2, 0.1]])
    flat = samples.reshape(-1, 4)
    cov = flat.T @ flat / len(flat)
    shrunk = 0.5 * (cov + torch.diag(cov.diagonal()))
    expected = torch.distributions.MultivariateNormal(torch.zeros(4), shrunk).log_prob(
        truth.reshape(-1)
    )
    got = metrics.patch_log_likelihood(samples, mean, truth, 2, jitter=0.0, shrink=True)
    assert abs(got - float(expected) / 4) < 1e-9
    # 3 samples for 4-pixel patches: singular without shrinkage, well-posed with it
    few = samples[:3]
    assert metrics.patch_log_likelihood(
        few, mean, truth, 2, shrink=True
    ) > metrics.patch_log_likelihood(few, mean, truth, 2)
