r"""Predictive metrics: marginal and joint log-likelihoods, calibration, OOD detection, patches.

Classification metrics take function samples ``f_s(x_n)`` (logits ``[S, N, C]``, e.g. from
``la.predictive_samples``) or predictive probabilities ``[N, C]`` (from ``la(x)``). Log-likelihoods
average *probabilities* over samples — ``log (1/S) Σ_s p(y | f_s)``, computed as a log-sum-exp —
never log-probabilities, which would be a lower bound, not the predictive.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .core.checks import check_finite, check_positive_int, plain_int
from .core.linalg import cholesky, whiten
from .core.seeds import seeded_generator

__all__ = [
    "accuracy",
    "brier_score",
    "calibration_bins",
    "dyadic_joint_log_likelihood",
    "expected_calibration_error",
    "gaussian_log_likelihood",
    "joint_log_likelihood",
    "marginal_log_likelihood",
    "ood_auroc",
    "patch_log_likelihood",
    "predictive_entropy",
]


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a Tensor, got {type(value).__name__}.")
    check_finite(f"`{name}`", value)
    return value


def _check_class_labels(y: object, n: int, n_classes: int) -> None:
    """Labels: ``[N]`` integers in ``[0, C)`` (not one-hot)."""
    _check_tensor("y", y)
    if y.ndim == 2 and y.shape == (n, n_classes):
        raise ValueError(
            f"`y` looks one-hot ({list(y.shape)}); metrics take class indices [N]: pass "
            "y.argmax(-1)."
        )
    if y.shape != (n,):
        raise ValueError(f"`y` must have shape [N] = [{n}], got {list(y.shape)}.")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError("`y` must hold integer class indices, got non-integer values.")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"`y` must hold class indices in [0, {n_classes - 1}], got values from "
            f"{int(y.min())} to {int(y.max())}."
        )


def _check_labels(samples: Tensor, y: Tensor) -> None:
    _check_tensor("samples", samples)
    if samples.ndim != 3:
        raise ValueError(
            f"`samples` (function samples) must have shape [S, N, C], got {list(samples.shape)}."
        )
    _check_class_labels(y, samples.shape[1], samples.shape[2])


def _check_probs(probs: Tensor, y: Tensor | None = None, name: str = "probs") -> None:
    _check_tensor(name, probs)
    if probs.ndim != 2:
        raise ValueError(f"`{name}` must be probabilities [N, C], got {list(probs.shape)}.")
    if bool(((probs < 0) | (probs > 1)).any()):
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1] (pass softmax outputs, not logits)."
        )
    if y is not None:
        _check_class_labels(y, probs.shape[0], probs.shape[1])


def _point_log_probs(samples: Tensor, y: Tensor) -> Tensor:
    """``log p(y_n | f_s(x_n))``: ``[S, N]``."""
    _check_labels(samples, y)
    return torch.log_softmax(samples.double(), -1).gather(
        -1, y.long()[None, :, None].expand(samples.shape[0], -1, 1)
    )[..., 0]


def marginal_log_likelihood(samples: Tensor, y: Tensor) -> Tensor:
    """``log (1/S) Σ_s p(y_n | f_s(x_n))`` per test point: ``[N]``."""
    log_p = _point_log_probs(samples, y)
    return torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])


JOINT_COUNTS = ("composition", "multinomial")


def joint_log_likelihood(
    samples: Tensor,
    y: Tensor,
    kappa: int,
    tau: int | None = None,
    n_shuffles: int = 10,
    seed: int = 0,
    counts: str = "composition",
) -> Tensor:
    """κ-adic joint log-likelihood: ``[n_shuffles · (N // κ)]`` set scores, shuffle by shuffle.

    The protocol of Antorán et al. ("Sampling-based inference for large linear models, with
    application to linearised Laplace", ICLR 2023; detailed in Antorán's PhD thesis, Ch. 7 and
    App. 4), which extends Osband et al.'s dyadic sampling ("The neural testbed: evaluating joint
    predictions", 2022) to sets of ``κ`` points. Each shuffle of the test set splits it into
    ``N // κ`` disjoint sets ``{x_1, …, x_κ}`` (a remainder of ``N mod κ`` points is left out);
    each set is re-sampled to ``τ`` labels, ``b_l`` copies of ``(x_l, y_l)`` with ``Σ_l b_l = τ``,
    the same counts for every function sample, and scored by

        ``log (1/S) Σ_s exp(Σ_l b_l log p(y_l | f_s(x_l)))``.

    Repeated points make the score reward predictions whose errors are correlated. The reported
    value is ``.mean()`` over all sets of all shuffles, not divided by ``τ``: a deterministic
    predictor scores ``τ`` times its mean marginal log-likelihood in expectation. ``κ = 1``
    (``τ = 1``) is the marginal log-likelihood, and ``κ = 2, τ = 10`` with compositions is dyadic
    sampling (see :func:`dyadic_joint_log_likelihood`).

    Args:
        samples: ``[S, N, C]`` logits (or log-probabilities) of the function samples.
        y: ``[N]`` class labels.
        kappa: ``κ``, the number of distinct test points per set.
        tau: ``τ``, the labels per set; default ``10(κ − 1)`` (the paper's), ``1`` for ``κ = 1``.
            ``tau=kappa`` makes every count 1: the joint likelihood of distinct ``κ``-tuples.
        n_shuffles: Shuffles of the test set (the paper's 10).
        seed: Seeds the shuffles and the counts.
        counts: ``"composition"``: the counts are a uniform random composition of ``τ`` into
            ``κ`` positive parts (``κ − 1`` distinct cut points among ``1, …, τ − 1``);
            ``"multinomial"``: Osband et al.'s ``Multinomial(τ, 1/κ)``, zeros allowed.
    """
    log_p = _point_log_probs(samples, y)
    n = log_p.shape[1]
    kappa = plain_int(kappa)
    if not (isinstance(kappa, int) and 1 <= kappa <= n):
        raise ValueError(
            f"`kappa` must be an integer in [1, {n}] (the number of test points), got {kappa!r}."
        )
    if counts not in JOINT_COUNTS:
        raise ValueError(
            f"`counts` must be one of {JOINT_COUNTS}, got {counts!r}: 'composition' for the "
            "paper's counts >= 1, 'multinomial' for Osband et al.'s."
        )
    tau = max(10 * (kappa - 1), 1) if tau is None else plain_int(tau)
    least = kappa if counts == "composition" else 1
    if not (isinstance(tau, int) and tau >= least):
        raise ValueError(
            f"`tau` must be an integer >= {least} for kappa={kappa} and counts={counts!r}, got "
            f"{tau!r}; pass tau=None for the paper's 10(kappa - 1) labels per set, or tau=kappa "
            "for one label per point."
        )
    n_shuffles = check_positive_int("n_shuffles", n_shuffles)
    draw = _compositions if counts == "composition" else _multinomial_counts
    gen = seeded_generator(seed, "joint", kappa)
    n_sets = n // kappa
    totals = []
    for _ in range(n_shuffles):
        sets = torch.randperm(n, generator=gen)[: n_sets * kappa].reshape(n_sets, kappa)
        b = draw(n_sets, kappa, tau, gen).to(log_p)
        totals.append((b * log_p[:, sets]).sum(-1))  # [S, n_sets]
    return torch.logsumexp(torch.cat(totals, 1), 0) - math.log(log_p.shape[0])


def _compositions(n_sets: int, kappa: int, tau: int, gen: torch.Generator) -> Tensor:
    """``[n_sets, κ]`` uniform compositions of ``τ`` into ``κ`` parts ``≥ 1`` (stars and bars)."""
    cuts = torch.rand(n_sets, tau - 1, generator=gen).argsort(-1)[:, : kappa - 1] + 1
    ends = torch.zeros(n_sets, 1, dtype=torch.long), torch.full((n_sets, 1), tau)
    return cuts.sort(-1).values.diff(dim=-1, prepend=ends[0], append=ends[1])


def _multinomial_counts(n_sets: int, kappa: int, tau: int, gen: torch.Generator) -> Tensor:
    """``[n_sets, κ]`` draws from ``Multinomial(τ, 1/κ)``: each of ``τ`` labels picks a point."""
    picks = torch.randint(0, kappa, (n_sets, tau), generator=gen)
    return torch.zeros(n_sets, kappa, dtype=torch.long).scatter_add_(
        1, picks, torch.ones_like(picks)
    )


def dyadic_joint_log_likelihood(
    samples: Tensor, y: Tensor, kappa: int = 10, seed: int = 0
) -> Tensor:
    """Dyadic joint log-likelihood (Osband et al.'s neural testbed): ``[N // 2]`` pair values.

    Test points are paired at random; for each pair ``(a, b)`` draw ``c ~ U{1, …, κ−1}`` and score
    the ``κ`` labels made of ``c`` copies of ``(x_a, y_a)`` and ``κ − c`` of ``(x_b, y_b)``:
    ``log (1/S) Σ_s p(y_a|f_s(x_a))^c p(y_b|f_s(x_b))^{κ−c}``. Repeated points make the score
    sensitive to whether predictions are correlated, even on easy test sets.

    This is :func:`joint_log_likelihood` with 2 points per set, ``τ`` = this ``kappa`` labels and
    compositions as counts (``c`` and ``κ − c`` are a uniform composition of ``κ`` into 2 positive
    parts), over one shuffle; its own random draws keep its recorded values, so it is not a wrapper.
    """
    log_p = _point_log_probs(samples, y)
    n = log_p.shape[1]
    kappa = plain_int(kappa)
    if not (isinstance(kappa, int) and kappa >= 2) or n < 2:
        raise ValueError(
            f"Dyadic sampling needs kappa >= 2 and at least 2 test points; got kappa={kappa!r}, N={n}."
        )
    gen = seeded_generator(seed, "dyadic", kappa)
    order = torch.randperm(n, generator=gen)[: n - n % 2].reshape(2, -1)
    copies = torch.randint(1, kappa, (order.shape[1],), generator=gen).to(log_p)
    scores = copies * log_p[:, order[0]] + (kappa - copies) * log_p[:, order[1]]
    return torch.logsumexp(scores, 0) - math.log(log_p.shape[0])


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of ``argmax`` predictions equal to the label."""
    _check_probs(probs, y)
    return float((probs.argmax(-1) == y).double().mean())


def brier_score(probs: Tensor, y: Tensor) -> float:
    """``(1/N) Σ_n Σ_c (p_nc − 1[y_n = c])²``."""
    _check_probs(probs, y)
    onehot = torch.nn.functional.one_hot(y.long(), probs.shape[-1]).to(probs)
    return float((probs - onehot).square().sum(-1).mean())


def calibration_bins(probs: Tensor, y: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Mean confidence, accuracy and count per equal-width confidence bin: three ``[n_bins]``.

    Empty bins hold NaN confidence and accuracy (a reliability diagram skips them).
    """
    _check_probs(probs, y)
    n_bins = check_positive_int("n_bins", n_bins)
    confidence, prediction = probs.double().max(-1)
    correct = (prediction == y).double()
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)
    counts = torch.bincount(bins, minlength=n_bins).double()
    mean_conf = torch.bincount(bins, confidence, minlength=n_bins) / counts
    accuracy = torch.bincount(bins, correct, minlength=n_bins) / counts
    return mean_conf, accuracy, counts


def expected_calibration_error(probs: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """``Σ_b (|B_b|/N) |accuracy(B_b) − confidence(B_b)|`` over equal-width confidence bins."""
    confidence, accuracy, counts = calibration_bins(probs, y, n_bins)
    filled = counts > 0
    weights = counts[filled] / counts.sum()
    return float((weights * (accuracy[filled] - confidence[filled]).abs()).sum())


def predictive_entropy(probs: Tensor) -> Tensor:
    """``−Σ_c p_c log p_c`` per point: ``[N]``."""
    _check_probs(probs)
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def ood_auroc(probs_in: Tensor, probs_out: Tensor) -> float:
    """Area under the ROC curve separating out-of-distribution from in-distribution inputs.

    The score is the predictive entropy; the AUROC equals the probability that an OOD input has a
    higher entropy than an in-distribution one (ties count one half).
    """
    _check_probs(probs_in, name="probs_in")
    _check_probs(probs_out, name="probs_out")
    h_in, h_out = predictive_entropy(probs_in).double(), predictive_entropy(probs_out).double()
    if h_in.numel() == 0 or h_out.numel() == 0:
        raise ValueError("OOD AUROC needs at least one in-distribution and one OOD input.")
    scores = torch.cat([h_in, h_out])
    ranks = torch.empty_like(scores)
    ordered, order = scores.sort()
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    for value in ordered.unique_consecutive():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_in, n_out = h_in.numel(), h_out.numel()
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def gaussian_log_likelihood(
    mean: Tensor, covariance: Tensor, y: Tensor, sigma_noise: float = 0.0
) -> Tensor:
    """``log N(y_n | μ_n, Σ_n + σ² I)`` per point: ``[N]``.

    Args:
        mean: ``[N, C]`` predictive means.
        covariance: ``[N, C, C]`` functional covariances (or ``[N, C]`` variances).
        y: ``[N, C]`` (or ``[N]`` when ``C = 1``) targets.
        sigma_noise: Observation noise added to the diagonal.
    """
    for name, value in (("mean", mean), ("covariance", covariance), ("y", y)):
        _check_tensor(name, value)
    if mean.ndim != 2:
        raise ValueError(f"`mean` must have shape [N, C], got {list(mean.shape)}.")
    n, c = mean.shape
    cov = torch.diag_embed(covariance) if covariance.ndim == 2 else covariance
    if cov.shape != (n, c, c) or y.numel() != n * c:
        raise ValueError(
            f"Expected mean [N, C], covariance [N, C, C] or [N, C] and targets [N, C]; got "
            f"{list(mean.shape)}, {list(covariance.shape)} and {list(y.shape)}."
        )
    cov = cov.double() + sigma_noise**2 * torch.eye(c, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mean.double(), covariance_matrix=cov)
    return dist.log_prob(y.reshape(n, c).double())


def patch_log_likelihood(
    samples: Tensor,
    mean: Tensor,
    truth: Tensor,
    patch_size: int,
    jitter: float = 1e-6,
    shrink: bool = False,
) -> float:
    """Per-pixel Gaussian log-likelihood of an image over non-overlapping ``p×p`` patches.

    Each patch ``P`` (tiling from the top-left; border patches may be smaller) is scored with
    ``log N(x_P | μ_P, Σ̂_P + δI)``, ``Σ̂_P = (1/S) Σ_s e_{s,P} e_{s,P}ᵀ`` the second moment of the
    zero-mean sample deviations; the result is ``Σ_P log p_P / Σ_P |P|``. ``p = 1`` gives the
    marginal (per-pixel) log-likelihood. Computed in float64 (Antorán et al., ICLR 2023, §6).

    Args:
        samples: ``[S, H, W]`` zero-mean deviations ``J(x) ζ_s`` of the image.
        mean: ``[H, W]`` predictive mean (the reconstruction).
        truth: ``[H, W]`` ground truth.
        patch_size: ``p``.
        jitter: ``δ``, added to every patch covariance.
        shrink: Halve the off-diagonal entries, ``Σ̂ ← ½(Σ̂ + diag Σ̂)`` (Maddox et al.; the
            reference code's choice for the walnut). A ``p² × p²`` sample covariance from
            ``S < p²`` samples is singular, and without this its null space is scored by ``δ`` alone.
    """
    if samples.ndim != 3 or mean.shape != samples.shape[1:] or truth.shape != mean.shape:
        raise ValueError(
            f"Expected samples [S, H, W], mean [H, W] and truth [H, W]; got {list(samples.shape)}, "
            f"{list(mean.shape)} and {list(truth.shape)}."
        )
    height, width = mean.shape
    patch_size = plain_int(patch_size)
    if not (isinstance(patch_size, int) and 1 <= patch_size <= min(height, width)):
        raise ValueError(
            f"`patch_size` must be an integer in [1, {min(height, width)}] for a {height}×{width} image, got {patch_size!r}."
        )
    error, samples = (truth - mean).double(), samples.double()
    total = 0.0
    for rows, cols in _patch_blocks(height, width, patch_size):
        dev = _patches(samples[:, rows, cols], patch_size)  # [P, S, q]
        cov = dev.transpose(1, 2) @ dev / dev.shape[1]
        if shrink:
            cov = 0.5 * (cov + torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1)))
        cov = cov + jitter * torch.eye(cov.shape[-1], dtype=torch.float64)
        target = _patches(error[None, rows, cols], patch_size)[:, 0]  # [P, q]
        dist = torch.distributions.MultivariateNormal(
            torch.zeros_like(target), covariance_matrix=cov
        )
        total += float(dist.log_prob(target).sum())
    return total / (height * width)


def _patch_blocks(height: int, width: int, p: int) -> list[tuple[slice, slice]]:
    """Regions of equal patch shape: the full-patch interior and the smaller border strips."""
    rows = [slice(0, height - height % p)] + (
        [slice(height - height % p, height)] if height % p else []
    )
    cols = [slice(0, width - width % p)] + ([slice(width - width % p, width)] if width % p else [])
    return [(r, c) for r in rows for c in cols]


def _patches(images: Tensor, p: int) -> Tensor:
    """Split ``[S, h, w]`` (``h``, ``w`` multiples of ``p`` or a border strip) into ``[P, S, q]``."""
    s, h, w = images.shape
    ph, pw = min(p, h), min(p, w)
    blocks = images.reshape(s, h // ph, ph, w // pw, pw).permute(1, 3, 0, 2, 4)
    return blocks.reshape(-1, s, ph * pw)


def grid_scores(ggn: Tensor, jac: Tensor, grid: Tensor, score: Callable[[Tensor], float]) -> list:
    """``score`` of the linearised predictive's factor at each isotropic precision in ``grid``.

    The posterior is ``N(0, (M + α I)^{-1})`` for ``M`` = ``ggn``; ``jac`` ``[N, C, P]``; ``score``
    takes ``half`` ``[N, C, P]`` with ``half halfᵀ`` the functional covariance (for example
    :func:`linearised_nll` or :func:`linearised_joint_nll` with the data bound).
    """
    eye = torch.eye(jac.shape[-1], dtype=torch.float64, device=jac.device)
    return [score(whiten(cholesky(ggn + alpha * eye), jac)) for alpha in grid]


def linearised_joint_nll(
    f0: Tensor, half: Tensor, y: Tensor, kappa: int, n_samples: int = 64, seed: int = 0
) -> float:
    """Negative κ-adic joint log-likelihood (:func:`joint_log_likelihood`) of ``N(f0, half halfᵀ)``.

    ``n_samples`` function samples ``f0 + half ε``, ``ε ~ N(0, I)`` drawn from ``seed``: the same
    ``ε`` and the same sets for every call with the same shapes, so scores over a grid of priors
    differ by the posterior alone. ``f0`` ``[N, C]`` logits, ``half`` ``[N, C, R]``.
    """
    gen = seeded_generator("linearised_joint_nll", seed)
    eps = torch.randn(half.shape[-1], n_samples, generator=gen, dtype=torch.float64)
    samples = f0 + torch.einsum("ncr,rs->snc", half.double(), eps.to(half.device))
    return float(-joint_log_likelihood(samples, y, kappa, seed=seed).mean())


def linearised_nll(f0: Tensor, half: Tensor, y: Tensor, sigma_noise: float | None) -> float:
    """Mean NLL of the linearised predictive ``N(f0, half halfᵀ)``.

    Regression (``sigma_noise`` given) adds the noise; classification (``None``) uses the probit
    approximation ``softmax(f0 / (1 + π σ²/8)^{1/2})``.
    """
    if sigma_noise is not None:
        cov = half @ half.transpose(1, 2)
        return float(-gaussian_log_likelihood(f0, cov, y, sigma_noise).mean())
    variance = half.square().sum(-1)
    log_probs = torch.log_softmax(f0 / (1 + math.pi * variance / 8).sqrt(), -1)
    return float(-log_probs[torch.arange(len(f0)), y.long()].mean())
