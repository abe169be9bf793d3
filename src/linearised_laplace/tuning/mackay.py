r"""MacKay's update of the prior precision and the noise, with its clipping and secant step.

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
``σ² = ‖y − g(θ̄)‖² / (nC − γ)``. Each group's step in ``log α`` follows the secant on MacKay's
step where it reverses or creeps (:func:`secant_step`) and is bounded to :data:`PRECISION_RANGE`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..core.lowrank import LowRank
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

    With ``clip`` (for estimated ``γ̂``, whose noise can leave the feasible range) a ``γ̂_g`` at or
    above ``min(d_g, n·C)``, which no posterior has, is first clipped to ``min(d_g, n·C) − 1``
    (``− ½`` for groups of one parameter), ``n·C`` being ``n_observations`` (the rank bound of the
    GGN) when given, and, with ``floor`` (an estimate that can be negative), raised to at least 1
    (``½``). Values just below the bound stand: an overfit network's ``γ`` lies there. An exact
    ``γ`` lies in ``(0, min(d_g, n·C))`` already and is used as it is.
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
    gamma = torch.maximum(gamma, low) if floor else gamma
    return torch.where(gamma < high, gamma, high - low)


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


def sketch_start(
    values: Tensor,
    vectors: Tensor,
    anchor: Tensor,
    network_mean: bool,
    n_iter: int = 200,
    gamma_scale: float = 1.0,
    ggn_diag: Tensor | None = None,
) -> float | None:
    r"""A cheap start for EM: MacKay's fixed point in the GGN's top-``r`` eigenspace.

    With ``M ≈ V diag(λ) Vᵀ`` (the Nyström sketch a sampler preconditions with; ``V`` need not
    be orthonormal, as the sketch is kept in prior-whitened coordinates) and the mean
    approximated as ``θ*`` shrunk by the prior in that subspace, ``θ̄ ≈ V diag(λ/(λ+α)) Vᵀ θ*``,
    the isotropic fixed point of

    $$ α = \frac{\sum_i λ_i/(λ_i+α)}{\sum_i (λ_i/(λ_i+α))^2 (v_iᵀ θ^*)^2} $$

    with the denominator ``‖θ*‖²`` where EM's mean is ``θ*`` (``network_mean``), found by iterating
    it. No data pass: ``λ``, ``V`` ``[D, r]`` and ``θ*`` ``[D]`` are at hand. ``None`` where it has
    no finite fixed point in :data:`PRECISION_RANGE` (``θ*`` orthogonal to the sketch, an empty
    sketch). ``gamma_scale`` multiplies the numerator, as EM's does on a shrunk pilot
    (:mod:`~linearised_laplace.methods.plan`).

    The sketch alone misses the ``γ`` of the ``D − r`` directions outside it, so its fixed point
    lies below EM's, far below on a network whose GGN spectrum decays slowly (α 0.3 against 8 on
    the overconfident Table 1 CNN), where the samples' solves are worst conditioned. With
    ``ggn_diag`` (``[D]``, an estimate of ``diag(M)``) and ``network_mean``, the remainder
    ``R = M − M_r`` adds ``Σ_j ρ_j/(ρ_j+α)``, ``ρ = diag(R)``: as ``x ↦ x/(x+α)`` is operator
    concave, ``tr f(M_r + R) ≤ tr f(M_r) + tr f(R) ≤ tr f(M_r) + Σ_j f(ρ_j)`` (Rotfel'd's
    inequality, then Schur's), so the start lies at or above EM's fixed point and the first
    solves run where ``H`` is better conditioned than at the fixed point.
    """
    sketch = LowRank(vectors.double(), values.double())
    q, r = torch.linalg.qr(sketch.vectors)  # M_r = Q (R Λ Rᵀ) Qᵀ: eigenpairs of the r × r core
    values, rotation = torch.linalg.eigh((r * sketch.values) @ r.T)
    values = values.clamp_min(0)
    if network_mean and ggn_diag is not None:
        values = torch.cat([values, (ggn_diag.double() - sketch.diagonal()).clamp_min(0)])
    projection = (rotation.T @ (q.T @ anchor.double())).square()
    norm_sq = float(anchor.double().square().sum())
    alpha = 1.0
    for _ in range(n_iter):
        shrink = values / (values + alpha)
        mean_sq = norm_sq if network_mean else float((shrink.square() * projection).sum())
        if not mean_sq > 0:
            return None
        new = gamma_scale * float(shrink.sum()) / mean_sq
        if not PRECISION_RANGE[0] < new < PRECISION_RANGE[1]:
            return None
        converged = abs(math.log(new / alpha)) < 1e-6
        alpha = new
        if converged:
            break
    return alpha


MAX_EXTRAPOLATION = 4.0
"""The longest secant step, in multiples of MacKay's own (see :func:`secant_step`)."""
CONTRACTION = 0.8
"""The largest ratio of successive MacKay steps that counts as a contraction to extrapolate: where
the steps barely shrink (a far start, where ``α`` moves by a constant factor per step), the secant
would leap, possibly past the nearest fixed point into another's basin."""
MAX_DISTANCE_FACTOR = 10.0
"""The longest distance to the fixed point EM's stopping rule assumes, in MacKay steps: a monotone
approach whose steps do not shrink counts as contracting by 0.9 per step (see :func:`secant_step`)."""


class MacKayStep(NamedTuple):
    """A step of :func:`secant_step`.

    Attributes:
        precision: ``[G]`` the precision taken, within :data:`PRECISION_RANGE`.
        secant: ``[G]`` the step taken in multiples of MacKay's: below 1 where it interpolates a
            reversal, above 1 where it extrapolates a creeping approach, else 1.
        at_bound: Whether a group's precision sits at the range's bound.
        distance: ``[G]`` the estimated distance in ``log α`` from the current iterate to the
            fixed point, which EM's stopping rule compares with ``tol``.
    """

    precision: Tensor
    secant: Tensor
    at_bound: bool
    distance: Tensor


def secant_distance(step: Tensor, last: Tensor, last_step: Tensor) -> Tensor:
    """How far a fixed-point iteration in ``u`` still is from its fixed point, estimated.

    ``step`` is the update ``g_k`` proposed now, ``last`` the step taken before (``u_k − u_{k−1}``)
    and ``last_step`` the update proposed then (``g_{k−1}``). Where the approach is monotone
    (``step`` continues ``last``) the secant on ``g`` puts the fixed point
    ``|g_k| (u_k − u_{k−1}) / (g_{k−1} − g_k)`` away, at least ``|g_k|`` and at most
    :data:`MAX_DISTANCE_FACTOR` ``|g_k|`` (steps that do not shrink); elsewhere it is ``|g_k|``.
    """
    secant = last / (last_step - step)
    factor = torch.where(secant > 0, secant, math.inf).clamp(1.0, MAX_DISTANCE_FACTOR)
    return torch.where(step * last > 0, factor * step.abs(), step.abs())


PRECISION_KEYS = ("prior_precision", "proposed")
SIGMA_KEYS = ("sigma_noise", "proposed_sigma")
"""The history's records of ``α`` and of ``σ``: the value taken and MacKay's update."""


def secant_step(
    current: Tensor, proposed: Tensor, history: list[dict], keys: tuple = PRECISION_KEYS
) -> MacKayStep:
    """Move ``log α`` towards the MacKay update along the secant on MacKay's step, bounded.

    With ``u = log α`` and MacKay's step ``g(u) = log F(α) − log α``, the fixed point is the root
    of ``g``. From the last two iterates the secant puts it at
    ``u_k − g_k (u_k − u_{k−1}) / (g_k − g_{k−1})``: MacKay's step times
    ``s = (u_k − u_{k−1}) / (g_{k−1} − g_k)``. Two cases take it:

    - **A reversal** (``g_k`` against the last step, so ``g`` changed sign between the iterates):
      the root is bracketed and the secant interpolates, ``0 < s |g_k| < |u_k − u_{k−1}|``, so
      the step stays inside the bracket. An oscillation that contracts by ``ρ ∈ (−1, 0)`` per step
      (EM with ``θ*`` on the Table 1 CNNs: about −0.4) lands in one step where ``g`` is linear,
      and a two-cycle or a growing oscillation is brought back inside its bracket.
    - **A creeping approach** (``g_k`` continues the last step and shrank since it by at least
      :data:`CONTRACTION`): the secant extrapolates, ``s`` clamped to ``[1,``
      :data:`MAX_EXTRAPOLATION` ``]``, so an iteration contracting by ``ρ ∈ (0, 1)`` needs a few
      steps rather than ``log(tol) / log ρ``.

    Elsewhere (the first step, or one that barely contracts) the step is MacKay's own.

    The distance to the fixed point is ``|g_k|``, except on a monotone approach, where a
    step of ``|g|`` leaves ``|g| ρ / (1 − ρ)`` to go: there it is :func:`secant_distance` (so a
    creeping approach is not taken for converged because its steps are small).

    Args:
        current: ``[G]`` precision now.
        proposed: ``[G]`` MacKay's update.
        history: The run's records so far (the last two give the last step and MacKay's
            ``proposed`` update then).
        keys: The records' names of the value and MacKay's update: :data:`PRECISION_KEYS`, or
            :data:`SIGMA_KEYS` to step ``log σ`` the same way.

    Returns:
        The :class:`MacKayStep`.
    """
    value, suggested = keys
    step = proposed.log() - current.log()
    secant, distance = torch.ones_like(step), step.abs()
    if len(history) >= 2 and suggested in history[-1]:
        before = torch.tensor(history[-2][value], dtype=step.dtype).reshape(-1).log()
        last = current.log() - before
        last_step = torch.tensor(history[-1][suggested], dtype=step.dtype).log() - before
        factor = last / (last_step - step)
        creeps = (step * last > 0) & (step.abs() <= CONTRACTION * last_step.abs())
        reverses = (step * last < 0) & (factor > 0)
        secant = torch.where(creeps, factor.clamp(1.0, MAX_EXTRAPOLATION), secant)
        secant = torch.where(reverses, factor, secant)
        distance = secant_distance(step, last, last_step)
    low, high = PRECISION_RANGE
    taken = (current.log() + secant * step).exp()
    precision = torch.where(secant == 1, proposed, taken).clamp(low, high)
    at_bound = bool(((precision <= low) | (precision >= high)).any())
    return MacKayStep(precision, secant, at_bound, distance)
