r"""Expectation-maximisation of the prior precision (MacKay's update), exact or from samples.

At the MacKay fixed point of the evidence (method-spec §1.3),

$$ α_g = γ_g / ‖θ̄_g‖², \qquad γ_g = d_g − α_g \operatorname{tr}_g(H^{-1}) = \operatorname{tr}_g(H^{-1} M), $$

per prior group ``g``, with ``θ̄`` the linear model's posterior mean and ``γ`` the effective number
of parameters. The sample-based E-step (Antorán et al., 2023) estimates ``γ`` from zero-mean
posterior samples ``ζ_k ~ N(0, H^{-1})``:

* function space (default): ``γ̂ = (1/K) Σ_k ζ_kᵀ M ζ_k = (1/K) Σ_k ‖Φ ζ_k‖²_B``, variance
  ``2 Σ_j r_j²`` with ``r_j = μ_j / (μ_j + α)``: best when ``γ ≪ D`` (all networks);
* weight space: ``γ̂ = D − (1/K) Σ_k ζ_kᵀ A ζ_k``, variance ``2 Σ_j (1 − r_j)²``: best when ``γ ≈ D``.

Estimated ``γ̂`` are clipped to ``[1, min(d_g, n·C) − 1]``: ``M`` has rank at most ``n·C``, so neither
may the exact ``γ``; an unconverged solve can overshoot (at small ``α`` samples are large and the
estimate inflates), and the clip keeps EM from stepping to a far too small ``α``. For a Gaussian
likelihood MacKay's noise update is
``σ² = ‖y − g(θ̄)‖² / (nC − γ)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ._checks import check_positive_int
from ._progress import progress_bar
from .linear_model import LinearGaussianModel

GAMMA_ESTIMATORS = ("function", "weight")


def group_sum(values: Tensor, group_ids: Tensor, n_groups: int) -> Tensor:
    """Sum ``[..., D]`` over the coordinates of each group: ``[..., G]``."""
    out = values.new_zeros(*values.shape[:-1], n_groups)
    return out.index_add_(-1, group_ids.to(values.device), values)


def function_space_gamma(model: LinearGaussianModel, samples: Tensor, n_groups: int) -> Tensor:
    """``γ̂_g = (1/K) Σ_k ⟨ζ_{k,g}, (M ζ_k)_g⟩`` (one data pass): ``[G]`` (float64)."""
    if n_groups == 1:
        return model.function_norms(samples).mean().double().reshape(1)
    ggn_z = model.ggn_products(samples)
    return group_sum((samples * ggn_z).double(), model.prior.groups, n_groups).mean(0)


def weight_space_gamma(
    prior_diag: Tensor, samples: Tensor, group_ids: Tensor, n_groups: int
) -> Tensor:
    """``γ̂_g = d_g − (1/K) Σ_k Σ_{j∈g} a_j ζ_{kj}²``: ``[G]`` (float64)."""
    sizes = group_sum(torch.ones_like(prior_diag, dtype=torch.float64), group_ids, n_groups)
    spent = group_sum((prior_diag * samples.square()).double(), group_ids, n_groups).mean(0)
    return sizes - spent


def exact_gamma(
    covariance_diag: Tensor, prior_diag: Tensor, group_ids: Tensor, n_groups: int
) -> Tensor:
    """``γ_g = d_g − Σ_{j∈g} a_j (H^{-1})_{jj}``: ``[G]`` (float64)."""
    sizes = group_sum(torch.ones_like(prior_diag, dtype=torch.float64), group_ids, n_groups)
    return sizes - group_sum((prior_diag * covariance_diag).double(), group_ids, n_groups)


def mackay_update(
    gamma: Tensor,
    mean: Tensor,
    group_ids: Tensor,
    n_groups: int,
    clip: bool = True,
    n_observations: int | None = None,
) -> Tensor:
    """``α_g = γ_g / ‖θ̄_g‖²``: ``[G]`` (float64).

    With ``clip`` (for estimated ``γ̂``, whose noise can leave the feasible range) ``γ̂_g`` is first
    clipped to ``[1, min(d_g, n·C) − 1]`` (``½`` for groups of one parameter), ``n·C`` being
    ``n_observations`` (the rank bound of the GGN) when given; an exact ``γ`` lies in
    ``(0, min(d_g, n·C))`` already and is used as it is.
    """
    sizes = group_sum(torch.ones_like(mean, dtype=torch.float64), group_ids, n_groups)
    if clip:
        low = torch.clamp(sizes / 2, max=1.0)
        high = sizes if n_observations is None else sizes.clamp_max(n_observations)
        gamma = torch.minimum(torch.maximum(gamma, low), high - low)
    norm_sq = group_sum(mean.double().square(), group_ids, n_groups)
    return gamma / norm_sq.clamp_min(torch.finfo(torch.float64).tiny)


def noise_update(residual_sq: float, n_observations: int, gamma: float) -> float:
    """MacKay's ``σ = (‖y − g(θ̄)‖² / (nC − γ))^{1/2}``."""
    return math.sqrt(residual_sq / max(n_observations - gamma, 1.0))


@dataclass(frozen=True)
class EStep:
    """What an E-step returns.

    Attributes:
        mean: ``[D]`` the posterior mean ``θ̄`` at the current hyperparameters.
        gamma: ``[G]`` the (estimated) effective dimensions.
        samples: ``[K, D]`` posterior samples (warm start of the next step), if any.
        residual_sq: ``‖y − g(θ̄)‖²`` over the training set (for the noise update), if computed.
    """

    mean: Tensor
    gamma: Tensor
    samples: Tensor | None = None
    residual_sq: float | None = None


@dataclass(frozen=True)
class EMState:
    """The resumable state of an EM run (what a checkpoint holds).

    Attributes:
        step: Completed EM steps.
        precision: ``[G]`` current prior precision.
        sigma: Current Gaussian noise (1 for classification).
        mean: ``[D]`` last ``θ̄`` (warm start).
        samples: ``[K, D]`` last samples (warm start), if any.
        history: One dict per completed step: ``step``, ``prior_precision`` (after the update),
            ``gamma``, ``mean_norm_sq``, ``sigma_noise``, ``seconds``; entry 0 holds the start.
        converged: Whether the stopping rule fired.
    """

    step: int
    precision: Tensor
    sigma: float
    mean: Tensor
    samples: Tensor | None = None
    history: list[dict] = field(default_factory=list)
    converged: bool = False


def check_em_settings(max_iter: int, tol: float, gamma: str = "function") -> None:
    """Validate EM settings before any work."""
    check_positive_int("max_iter", max_iter)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be > 0 (a change in log α), got {tol!r}.")
    if gamma not in GAMMA_ESTIMATORS:
        raise ValueError(f"`gamma` must be one of {GAMMA_ESTIMATORS}, got {gamma!r}.")


def run_em(
    e_step: Callable[[EMState], EStep],
    state: EMState,
    group_ids: Tensor,
    *,
    max_iter: int,
    tol: float,
    n_observations: int | None = None,
    update_sigma: bool = False,
    clip_gamma: bool = True,
    on_step: Callable[[EMState], None] | None = None,
    progress: bool | None = None,
) -> EMState:
    """Alternate E-steps and MacKay updates from ``state`` until ``|Δ log α| < tol`` or ``max_iter``.

    Args:
        e_step: Computes ``θ̄``, ``γ`` (and samples) at the state's hyperparameters.
        state: Where to start (a fresh state, or one loaded from a checkpoint).
        group_ids: ``[D]`` prior group of each coordinate.
        max_iter: Total EM steps, counting those already in ``state``.
        tol: Stop when every ``|Δ log α_g|`` (and ``|Δ log σ|``) is below this.
        n_observations: ``n·C``, which bounds ``γ`` and enters the noise update.
        update_sigma: Update ``σ`` too (Gaussian likelihood; needs ``n_observations``).
        clip_gamma: Clip estimated ``γ̂`` to ``[1, min(d_g, n·C) − 1]`` (off for exact ``γ``).
        on_step: Called with the new state after every completed step (checkpointing).
        progress: Show a progress bar.

    Returns:
        The final state.
    """
    n_groups = state.precision.numel()
    if not state.history:
        state = replace(state, history=[_record(0, state.precision, state.sigma)])
    with progress_bar(total=max_iter, initial=state.step, enabled=progress, desc="EM") as bar:
        while state.step < max_iter and not state.converged:
            start = time.perf_counter()
            result = e_step(state)
            precision = mackay_update(
                result.gamma, result.mean, group_ids, n_groups, clip_gamma, n_observations
            )
            sigma = state.sigma
            if update_sigma and n_observations is not None and result.residual_sq is not None:
                sigma = noise_update(result.residual_sq, n_observations, float(result.gamma.sum()))
            change = max(
                float((precision.log() - state.precision.log()).abs().max()),
                abs(math.log(sigma / state.sigma)),
            )
            record = _record(state.step + 1, precision, sigma, start)
            record["gamma"] = result.gamma.tolist()
            record["mean_norm_sq"] = group_sum(
                result.mean.double().square(), group_ids, n_groups
            ).tolist()
            state = EMState(
                state.step + 1,
                precision,
                sigma,
                result.mean,
                result.samples,
                [*state.history, record],
                change < tol,
            )
            if on_step is not None:
                on_step(state)
            bar.update()
            bar.set_postfix(alpha=f"{float(precision.mean()):.4g}")
    return state


def _record(step: int, precision: Tensor, sigma: float, start: float | None = None) -> dict:
    return {
        "step": step,
        "prior_precision": precision.tolist(),
        "sigma_noise": sigma,
        "seconds": 0.0 if start is None else time.perf_counter() - start,
    }
