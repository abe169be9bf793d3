r"""MacKay's update of the prior precision and the noise, with its clipping and damping.

At the MacKay fixed point of the evidence (MacKay, 1992),

$$ α_g = γ_g / ‖θ̄_g‖², \qquad γ_g = d_g − α_g \operatorname{tr}_g(H^{-1}) = \operatorname{tr}_g(H^{-1} M), $$

per prior group ``g``, with ``θ̄`` the linear model's posterior mean and ``γ`` the effective number
of parameters (:mod:`~linearised_laplace.posteriors.gamma`).

Estimated ``γ̂`` are clipped above at ``min(d_g, n·C) − 1``: ``M`` has rank at most ``n·C``, so
neither may the exact ``γ``; an unconverged solve can overshoot (at small ``α`` samples are large
and the estimate inflates), and the clip keeps EM from stepping to a far too small ``α``. The
weight-space estimate, which can be negative, is also clipped below at 1; the function-space one is
positive by construction and is not (a floor of 1 where the true ``γ ≪ 1``, at a huge ``α``, would
make the update ``α ← 1/‖θ̄‖² ∝ α²`` run away). For a Gaussian likelihood MacKay's noise update is
``σ² = ‖y − g(θ̄)‖² / (nC − γ)``. Each group's step in ``log α`` is damped (:func:`damped_step`)
and bounded to :data:`PRECISION_RANGE`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..posteriors.gamma import group_sum

PRECISION_RANGE = (1e-12, 1e12)
"""Bounds of the prior precision in EM: beyond them the posterior is numerically the prior (or the
likelihood alone) and the evidence flat."""


def mackay_update(
    gamma: Tensor,
    mean: Tensor,
    group_ids: Tensor,
    n_groups: int,
    clip: bool = True,
    n_observations: int | None = None,
    floor: bool = True,
) -> Tensor:
    """``α_g = γ_g / ‖θ̄_g‖²``: ``[G]`` (float64).

    With ``clip`` (for estimated ``γ̂``, whose noise can leave the feasible range) ``γ̂_g`` is first
    clipped to at most ``min(d_g, n·C) − 1`` (``− ½`` for groups of one parameter), ``n·C`` being
    ``n_observations`` (the rank bound of the GGN) when given, and, with ``floor`` (an estimate
    that can be negative), to at least 1 (``½``); an exact ``γ`` lies in ``(0, min(d_g, n·C))``
    already and is used as it is.
    """
    if clip:
        gamma = clipped_gamma(gamma, group_ids, n_groups, n_observations, floor)
    norm_sq = group_sum(mean.double().square(), group_ids, n_groups)
    return gamma / norm_sq.clamp_min(torch.finfo(torch.float64).tiny)


def clipped_gamma(
    gamma: Tensor,
    group_ids: Tensor,
    n_groups: int,
    n_observations: int | None = None,
    floor: bool = True,
) -> Tensor:
    """``γ̂`` ``[G]`` clipped to the feasible range, as :func:`mackay_update` describes."""
    sizes = group_sum(torch.ones_like(group_ids, dtype=torch.float64), group_ids, n_groups)
    low = torch.clamp(sizes / 2, max=1.0)
    high = sizes if n_observations is None else sizes.clamp_max(n_observations)
    return torch.minimum(torch.maximum(gamma, low) if floor else gamma, high - low)


def implausible_gamma(
    gamma: Tensor, sizes: Tensor, n_samples: int, n_observations: int | None = None
) -> Tensor:
    """``[G]`` bool: whether ``γ̂_g`` is above any posterior's ``γ_g``.

    That is, above its bound ``min(d_g, n·C)`` by more than 4 of its Monte-Carlo standard errors,
    which are at most ``(2 d_g / K)^{1/2}`` for either estimator (``K`` samples). No posterior has
    such a ``γ``: the samples behind it are far from converged (too few solver steps for how
    ill-conditioned ``H`` is at this ``α``), and its clipped MacKay update is not to be trusted.
    """
    high = sizes if n_observations is None else sizes.clamp_max(n_observations)
    return gamma > high + 4 * (2 * sizes / max(n_samples, 1)).sqrt()


def noise_update(residual_sq: float, n_observations: int, gamma: float) -> float:
    """MacKay's ``σ = (‖y − g(θ̄)‖² / (nC − γ))^{1/2}``."""
    return math.sqrt(residual_sq / max(n_observations - gamma, 1.0))


def damped_step(
    current: Tensor, proposed: Tensor, history: list[dict]
) -> tuple[Tensor, Tensor, bool]:
    """Move ``log α`` towards the MacKay update, damped and bounded.

    Each group's damping (1 at the start) halves when the proposed step reverses the direction of
    the last step taken and is more than half its size (an oscillation that does not contract by
    half per step; a two-cycle then converges), and doubles (up to 1) when the step continues in
    the last one's direction, so that one overshoot (a first step from a far start) does not slow
    every later step of a monotone approach.

    Args:
        current: ``[G]`` precision now.
        proposed: ``[G]`` MacKay's update.
        history: The run's records so far (the last two give the last step and damping).

    Returns:
        ``(precision [G], damping [G], at_bound)``; the precision lies in :data:`PRECISION_RANGE`.
    """
    step = proposed.log() - current.log()
    damping = torch.tensor(history[-1].get("damping", [1.0] * len(step)), dtype=step.dtype)
    if len(history) >= 2:
        last = current.log() - torch.tensor(history[-2]["prior_precision"], dtype=step.dtype).log()
        reverses = (step * last < 0) & (step.abs() > last.abs() / 2)
        continues = step * last > 0
        damping = torch.where(reverses, damping / 2, damping)
        damping = torch.where(continues, (2 * damping).clamp_max(1.0), damping)
    low, high = PRECISION_RANGE
    damped = (current.log() + damping * step).exp()
    precision = torch.where(damping == 1, proposed, damped).clamp(low, high)
    at_bound = bool(((precision <= low) | (precision >= high)).any())
    return precision, damping, at_bound
