import itertools
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


def _log_p(f, y):
    return f.double().log_softmax(-1)[:, torch.arange(len(y)), y]  # [S, N]


def _distinct_tuples(f, y, kappa, seed=0):
    """The metric before τ: one seeded partition into κ-tuples, every point counted once."""
    log_p, n = _log_p(f, y), len(y)
    gen = metrics.seeded_generator(seed, "joint", kappa)
    order = torch.randperm(n, generator=gen)[: n - n % kappa].reshape(-1, kappa)
    return torch.logsumexp(log_p[:, order].sum(-1), 0) - math.log(len(f))


def _compositions(tau, kappa):
    """Every composition of τ into κ positive parts, each of probability 1/C(τ − 1, κ − 1)."""
    cuts = itertools.combinations(range(1, tau), kappa - 1)
    parts = [[b - a for a, b in itertools.pairwise((0, *c, tau))] for c in cuts]
    return torch.tensor(parts), torch.full((len(parts),), 1 / len(parts), dtype=torch.float64)


def _multinomials(tau, kappa):
    """Every outcome of Multinomial(τ, 1/κ) with its probability."""
    parts = [b for b in itertools.product(range(tau + 1), repeat=kappa) if sum(b) == tau]
    weight = [math.factorial(tau) / math.prod(map(math.factorial, b)) / kappa**tau for b in parts]
    return torch.tensor(parts), torch.tensor(weight, dtype=torch.float64)


def _expected_set_score(f, y, kappa, counts):
    """Exact mean set score: every ordered κ-tuple of distinct points × every count vector."""
    log_p = _log_p(f, y)
    tuples = torch.tensor(list(itertools.permutations(range(len(y)), kappa)))  # [T, κ]
    parts, weight = counts
    scores = (parts[:, None, None].double() * log_p[:, tuples]).sum(-1)  # [B, S, T]
    per_count = (torch.logsumexp(scores, 1) - math.log(len(f))).mean(-1)
    return float(weight @ per_count)


def _mean_and_error(totals, n_shuffles):
    """Mean over sets and its Monte-Carlo standard error from the i.i.d. per-shuffle means."""
    per_shuffle = totals.reshape(n_shuffles, -1).mean(-1)
    return float(per_shuffle.mean()), float(per_shuffle.std() / math.sqrt(n_shuffles))


def test_joint_of_one_point_is_the_marginal_on_every_shuffle():
    f, y = _samples()
    joint = metrics.joint_log_likelihood(f, y, 1, n_shuffles=3)
    assert joint.shape == (36,)
    marginal = metrics.marginal_log_likelihood(f, y).sort().values
    for shuffle in joint.reshape(3, 12):
        torch.testing.assert_close(shuffle.sort().values, marginal)


def test_tau_equal_to_kappa_is_the_distinct_tuple_metric():
    f, y = _samples()
    for kappa in (2, 5):
        reference = _distinct_tuples(f, y, kappa, seed=3)
        once = metrics.joint_log_likelihood(f, y, kappa, tau=kappa, n_shuffles=1, seed=3)
        torch.testing.assert_close(once, reference)
        again = metrics.joint_log_likelihood(f, y, kappa, tau=kappa, n_shuffles=4, seed=3)
        assert again.shape == (4 * (12 // kappa),)
        torch.testing.assert_close(again[: 12 // kappa], reference)  # the first shuffle


@pytest.mark.parametrize("counts", ["composition", "multinomial"])
@pytest.mark.parametrize("kappa", [2, 3, 5])
def test_deterministic_predictor_scores_tau_times_its_marginal(kappa, counts):
    f, y = _samples(s=1)
    n_shuffles, tau = 2000, 10 * (kappa - 1)
    totals = metrics.joint_log_likelihood(f, y, kappa, n_shuffles=n_shuffles, counts=counts)
    mean, error = _mean_and_error(totals, n_shuffles)
    expected = tau * float(metrics.marginal_log_likelihood(f, y).mean())
    assert abs(mean - expected) < 4 * error, (mean, expected, error)


@pytest.mark.parametrize(("kappa", "tau"), [(2, 10), (3, 20), (2, 4)])
def test_mean_over_shuffles_is_the_exact_expectation_over_sets_and_counts(kappa, tau):
    f, y = _samples(s=20, n=6, c=3)
    n_shuffles = 4000
    for counts, enumerate_counts, other in (
        ("composition", _compositions, _multinomials),
        ("multinomial", _multinomials, _compositions),
    ):
        totals = metrics.joint_log_likelihood(
            f, y, kappa, tau=tau, n_shuffles=n_shuffles, seed=1, counts=counts
        )
        mean, error = _mean_and_error(totals, n_shuffles)
        expected = _expected_set_score(f, y, kappa, enumerate_counts(tau, kappa))
        assert abs(mean - expected) < 4 * error, (counts, mean, expected, error)
        wrong = _expected_set_score(f, y, kappa, other(tau, kappa))
        assert abs(mean - wrong) > 8 * error  # the test tells the two count laws apart


def test_compositions_are_uniform_and_positive():
    gen = torch.Generator().manual_seed(0)
    draws = metrics._compositions(60_000, 3, 6, gen)
    assert bool((draws >= 1).all()) and bool((draws.sum(-1) == 6).all())
    parts, _ = _compositions(6, 3)  # C(5, 2) = 10 outcomes
    frequency = (draws[:, None] == parts[None]).all(-1).double().mean(0)
    torch.testing.assert_close(
        frequency, torch.full((10,), 0.1, dtype=torch.float64), atol=0.006, rtol=0
    )


def test_joint_seeds_reproduce_and_differ():
    f, y = _samples()
    first = metrics.joint_log_likelihood(f, y, 3, seed=1)
    torch.testing.assert_close(metrics.joint_log_likelihood(f, y, 3, seed=1), first, rtol=0, atol=0)
    assert not torch.equal(metrics.joint_log_likelihood(f, y, 3, seed=2), first)
    assert not torch.equal(
        metrics.joint_log_likelihood(f, y, 3, seed=1, counts="multinomial"), first
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


def test_linearised_joint_nll_draws_the_same_functions_every_call():
    gen = torch.Generator().manual_seed(0)
    f0, y = torch.randn(12, 3, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    half = torch.randn(12, 3, 7, generator=gen)
    score = metrics.linearised_joint_nll(f0, half, y, 3, seed=2)
    assert score == metrics.linearised_joint_nll(f0, half, y, 3, seed=2)
    assert score != metrics.linearised_joint_nll(f0, half, y, 3, seed=4)
    deterministic = -metrics.joint_log_likelihood(f0[None].expand(64, -1, -1), y, 3, seed=2).mean()
    zero = metrics.linearised_joint_nll(f0, torch.zeros_like(half), y, 3, seed=2)
    assert zero == pytest.approx(float(deterministic), rel=1e-12)
