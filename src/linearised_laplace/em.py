r"""Expectation-maximisation of the prior precision (MacKay's update), exact or from samples.

At the MacKay fixed point of the evidence (MacKay, 1992),

$$ α_g = γ_g / ‖θ̄_g‖², \qquad γ_g = d_g − α_g \operatorname{tr}_g(H^{-1}) = \operatorname{tr}_g(H^{-1} M), $$

per prior group ``g``, with ``θ̄`` the linear model's posterior mean and ``γ`` the effective number
of parameters. The sample-based E-step (Antorán et al., 2023) estimates ``γ`` from zero-mean
posterior samples ``ζ_k ~ N(0, H^{-1})``:

* function space (default): ``γ̂ = (1/K) Σ_k ζ_kᵀ M ζ_k = (1/K) Σ_k ‖Φ ζ_k‖²_B``, variance
  ``2 Σ_j r_j²`` with ``r_j = μ_j / (μ_j + α)``: best when ``γ ≪ D`` (all networks);
* weight space: ``γ̂ = D − (1/K) Σ_k ζ_kᵀ A ζ_k``, variance ``2 Σ_j (1 − r_j)²``: best when ``γ ≈ D``.

Estimated ``γ̂`` are clipped above at ``min(d_g, n·C) − 1``: ``M`` has rank at most ``n·C``, so neither
may the exact ``γ``; an unconverged solve can overshoot (at small ``α`` samples are large and the
estimate inflates), and the clip keeps EM from stepping to a far too small ``α``. The weight-space
estimate, which can be negative, is also clipped below at 1; the function-space one is positive by
construction and is not (a floor of 1 where the true ``γ ≪ 1``, at a huge ``α``, would make the
update ``α ← 1/‖θ̄‖² ∝ α²`` run away). For a Gaussian likelihood MacKay's noise update is
``σ² = ‖y − g(θ̄)‖² / (nC − γ)``.

The loop is guarded against extreme priors (:func:`run_em`): each group's step in ``log α`` is
damped, halving whenever it reverses direction (a two-cycle converges instead of oscillating) and
recovering while it keeps its direction, ``α`` stays within :data:`PRECISION_RANGE`, a non-finite
update or a failed factorisation ends the run with a :class:`~linearised_laplace.DivergenceError`,
and a run that stops at ``max_iter`` or at the bound warns with a
:class:`~linearised_laplace.ConvergenceWarning`, as does a sampled ``γ̂`` no posterior can have. Each history entry records
its ``damping`` and whether the run had ``converged``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from . import persistence
from ._checks import check_positive_int
from ._progress import progress_bar
from .distributed import is_main_process
from .exceptions import ConvergenceWarning, DivergenceError
from .linalg import add_diagonal, cholesky
from .linear_model import LinearGaussianModel
from .mean import MeanMode, MeanProblem, log_likelihood, posterior_mean
from .noise import PosteriorNoise
from .seeds import derive_seed

GAMMA_ESTIMATORS = ("function", "weight")
PRECISION_RANGE = (1e-12, 1e12)
"""Bounds of the prior precision in EM: beyond them the posterior is numerically the prior (or the
likelihood alone) and the evidence flat."""


def group_sum(values: Tensor, group_ids: Tensor, n_groups: int) -> Tensor:
    """Sum ``[..., D]`` over the coordinates of each group: ``[..., G]``."""
    out = values.new_zeros(*values.shape[:-1], n_groups)
    return out.index_add_(-1, group_ids.to(values.device), values)


def function_space_gamma(
    model: LinearGaussianModel, samples: Tensor, n_groups: int, ggn_z: Tensor | None = None
) -> Tensor:
    """``γ̂_g = (1/K) Σ_k ⟨ζ_{k,g}, (M ζ_k)_g⟩``: ``[G]`` (float64).

    One data pass, or none when the products ``M ζ_k`` ``[K, D]`` are given as ``ggn_z``.
    """
    if ggn_z is None and n_groups == 1:
        return model.function_norms(samples).mean().double().reshape(1)
    if ggn_z is None:
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


def dense_gamma(ggn: Tensor, prior_diag: Tensor, group_ids: Tensor, n_groups: int) -> Tensor:
    """Exact ``γ`` ``[G]`` from the dense GGN, through ``H^{-1}``."""
    cov_diag = torch.cholesky_inverse(cholesky(add_diagonal(ggn, prior_diag))).diagonal()
    return exact_gamma(cov_diag, prior_diag, group_ids, n_groups)


def eigen_gamma(eigenvalues: Tensor, alpha: Tensor) -> Tensor:
    """Exact ``γ = Σ_j μ_j / (μ_j + α)`` ``[1]`` of an isotropic prior, from the GGN's eigenvalues."""
    return (eigenvalues / (eigenvalues + alpha)).sum().reshape(1)


MeanSolve = Callable[[MeanProblem, Tensor, Tensor, int], Tensor]
"""``(problem, init, preconditioner, seed) ↦ θ̄``."""


def log_evidence(
    model: LinearGaussianModel,
    ggn: Tensor,
    mode: MeanMode,
    anchor: Tensor,
    seed: int,
    solve: MeanSolve,
) -> Tensor:
    r"""Laplace evidence ``Σ_i log p(y_i | g_i(θ̄)) − ½ θ̄ᵀAθ̄ − ½ log|H| + ½ log|A|`` (float64).

    ``ggn``: the dense ``M`` of ``model``; ``θ̄`` by ``solve``.
    """
    prior = model.prior.diag(torch.float64, ggn.device)
    factor = cholesky(add_diagonal(ggn, prior))
    init = anchor.clone() if mode is MeanMode.AFFINE else torch.zeros_like(anchor)
    preconditioner = (ggn.diagonal() + prior).to(model.features.dtype)
    theta, _ = posterior_mean(model, mode, anchor, lambda p: solve(p, init, preconditioner, seed))
    fit = log_likelihood(model, mode, anchor, theta)
    theta = theta.double()
    return torch.tensor(
        fit
        - 0.5 * float((prior * theta * theta).sum())
        - float(factor.diagonal().log().sum())
        + 0.5 * float(prior.log().sum()),
        dtype=torch.float64,
    )


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


@dataclass(frozen=True)
class EStep:
    """What an E-step returns.

    Attributes:
        mean: ``[D]`` the posterior mean ``θ̄`` at the current hyperparameters.
        gamma: ``[G]`` the (estimated) effective dimensions.
        samples: ``[K, D]`` posterior samples (warm start of the next step), if any.
        residual_sq: ``‖y − g(θ̄)‖²`` over the training set (for the noise update), if computed.
        positive_gamma: ``γ̂`` is positive by construction (the function-space estimate), so it
            is not floored at 1 (see :func:`mackay_update`).
        solved: Every sample solve reached its solver's tolerance (a step whose samples did not
            never counts toward EM's convergence).
    """

    mean: Tensor
    gamma: Tensor
    samples: Tensor | None = None
    residual_sq: float | None = None
    positive_gamma: bool = False
    solved: bool = True


@dataclass(frozen=True)
class Expectation:
    """A posterior's part in EM.

    Attributes:
        step: The E-step at a state's hyperparameters.
        refit: Refits the posterior at the final state, drawing this many samples.
        settings: What else determines the run's result (JSON; part of the checkpoint fingerprint).
        estimated: ``γ`` is a sampled estimate, so EM clips it (see :func:`mackay_update`).
    """

    step: Callable[[EMState], EStep]
    refit: Callable[[EMState, int], None]
    settings: dict = field(default_factory=dict)
    estimated: bool = True


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
            ``gamma``, ``mean_norm_sq``, ``sigma_noise``, ``damping`` (per group, the fraction of
            the MacKay step in ``log α`` taken), ``at_bound``, ``clipped`` (the estimated ``γ̂``
            was clipped), ``solved`` (every sample solve reached its tolerance), ``converged``,
            ``seconds``; entry 0 holds the start.
        converged: Whether the stopping rule fired.
    """

    step: int
    precision: Tensor
    sigma: float
    mean: Tensor
    samples: Tensor | None = None
    history: list[dict] = field(default_factory=list)
    converged: bool = False


def exact_e_step(
    model: LinearGaussianModel,
    ggn: Tensor,
    eigenvalues: Tensor | None,
    mode: MeanMode,
    anchor: Tensor,
    seed: int,
    solve: MeanSolve,
) -> Callable[[EMState], EStep]:
    """The exact E-step on the dense GGN ``ggn`` of ``model``: ``θ̄`` by ``solve``, exact ``γ``.

    ``γ`` comes from ``M``'s ``eigenvalues`` if given (an isotropic prior), else from ``H^{-1}``.
    """

    def step(state: EMState) -> EStep:
        current, ratio = model.at(state.precision, state.sigma)
        prior = current.prior.diag(torch.float64, ggn.device)
        if eigenvalues is None:
            gamma = dense_gamma(ggn * ratio**2, prior, model.prior.groups, len(state.precision))
        else:  # no D × D copy: the GGN scales by ratio², so its eigenvalues do
            gamma = eigen_gamma(eigenvalues * ratio**2, prior[0])
        preconditioner = (ggn.diagonal() * ratio**2 + prior).to(model.features.dtype)
        step_seed = derive_seed(seed, "em", state.step)
        mean, residual = posterior_mean(
            current, mode, anchor, lambda p: solve(p, state.mean, preconditioner, step_seed)
        )
        return EStep(mean, gamma, None, residual)

    return step


def sampled_e_step(
    model: LinearGaussianModel,
    noise: PosteriorNoise,
    mode: MeanMode,
    anchor: Tensor,
    seed: int,
    gamma: str,
    solve: MeanSolve,
    sample: Callable,
) -> Callable[[EMState], EStep]:
    """The sampled E-step: ``θ̄`` by ``solve``, ``γ̂`` from samples of the kept ``noise``.

    ``noise`` is rescaled to each step's ``σ``; ``sample(model, noise, init, seed)`` returns the
    solve's result and the warm start of the next step's.
    """

    def step(state: EMState) -> EStep:
        current, ratio = model.at(state.precision, state.sigma)
        scaled, prior, n_groups = noise.scaled(ratio), current.prior_diag(), len(state.precision)
        step_seed = derive_seed(seed, "em", state.step)
        mean, residual = posterior_mean(
            current,
            mode,
            anchor,
            lambda p: solve(p, state.mean, scaled.ggn_diag + prior, step_seed),
        )
        result, warm = sample(current, scaled, state.samples, step_seed)
        if gamma == "function":
            g = function_space_gamma(current, result.samples, n_groups, result.ggn_samples)
        else:
            g = weight_space_gamma(prior, result.samples, model.prior.groups, n_groups)
        solved = bool(result.info.converged)
        return EStep(mean, g, warm, residual, positive_gamma=gamma == "function", solved=solved)

    return step


def run_fingerprint(snapshot: dict[str, Tensor], data, **settings) -> dict:
    """What identifies an EM run besides its start: the network, its weights, the data, settings."""
    return {
        "model": persistence.model_signature(snapshot),
        "weights": persistence.digest(snapshot),
        "data": data.fingerprint(),
        **settings,
    }


def check_em_settings(max_iter: int, tol: float) -> None:
    """Validate EM settings before any work."""
    check_positive_int("max_iter", max_iter)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be > 0 (a change in log α), got {tol!r}.")


def check_gamma(gamma: str) -> None:
    """Validate the name of a ``γ̂`` estimator."""
    if gamma not in GAMMA_ESTIMATORS:
        raise ValueError(f"`gamma` must be one of {GAMMA_ESTIMATORS}, got {gamma!r}.")


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
    checkpoint: str | Path | None = None,
    fingerprint: dict | None = None,
    progress: bool | None = None,
) -> EMState:
    """Alternate E-steps and MacKay updates from ``state`` until ``|Δ log α| < tol`` or ``max_iter``.

    Args:
        e_step: Computes ``θ̄``, ``γ`` (and samples) at the state's hyperparameters.
        state: Where to start (a fresh state, or one loaded from a checkpoint).
        group_ids: ``[D]`` prior group of each coordinate.
        max_iter: Total EM steps, counting those already in ``state``.
        tol: Stop when every undamped MacKay step ``|Δ log α_g|`` (and ``|Δ log σ|``) is below this.
        n_observations: ``n·C``, which bounds ``γ`` and enters the noise update.
        update_sigma: Update ``σ`` too (Gaussian likelihood; needs ``n_observations``).
        clip_gamma: Clip estimated ``γ̂`` (off for exact ``γ``; see :func:`mackay_update`).
        checkpoint: File the state is written to after every step (by the main process), and
            resumed from if it exists (:func:`load_checkpoint`).
        fingerprint: What else determines the run's result (JSON: network, data, settings); the
            start and ``update_sigma`` are added. A checkpoint is resumed only if it was written
            with an equal one.
        progress: Show a progress bar.

    Returns:
        The final state.

    Raises:
        DivergenceError: An update is not finite, or the E-step's factorisation failed.
    """
    n_groups = state.precision.numel()
    fingerprint = {
        **(fingerprint or {}),
        "initial_prior_precision": state.precision.tolist(),
        "initial_sigma_noise": state.sigma,
        "update_sigma": update_sigma,
    }
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, fingerprint, state.mean.dtype, state.mean.device)
    if not state.history:
        state = replace(state, history=[_record(0, state.precision, state.sigma)])
    pinned = False
    with progress_bar(total=max_iter, initial=state.step, enabled=progress, desc="EM") as bar:
        while state.step < max_iter and not state.converged and not pinned:
            start = time.perf_counter()
            result = _guarded(e_step, state)
            gamma = result.gamma
            if clip_gamma:
                floor = not result.positive_gamma
                gamma = clipped_gamma(gamma, group_ids, n_groups, n_observations, floor)
            proposed = mackay_update(gamma, result.mean, group_ids, n_groups, clip=False)
            if clip_gamma and result.samples is not None:
                _warn_implausible(result, group_ids, n_groups, n_observations, state)
            if not bool(torch.isfinite(proposed).all() & (proposed > 0).all()):
                raise DivergenceError(
                    f"EM step {state.step + 1}: the MacKay update of the prior precision is "
                    f"{proposed.tolist()} (γ = {result.gamma.tolist()}). Start from a moderate "
                    "prior_precision (e.g. 1.0)."
                )
            precision, damping, at_bound = damped_step(state.precision, proposed, state.history)
            sigma = state.sigma
            if update_sigma and n_observations is not None and result.residual_sq is not None:
                sigma = noise_update(result.residual_sq, n_observations, float(result.gamma.sum()))
            change = max(
                float((proposed.log() - state.precision.log()).abs().max()),
                abs(math.log(sigma / state.sigma)),
            )
            pinned = at_bound and bool(torch.equal(precision, state.precision))
            clipped = bool((gamma != result.gamma).any())
            # a clipped γ̂ or unconverged samples give no evidence of a fixed point
            converged = change < tol and not at_bound and not clipped and result.solved
            record = _record(state.step + 1, precision, sigma, start)
            record["gamma"] = result.gamma.tolist()
            record["mean_norm_sq"] = group_sum(
                result.mean.double().square(), group_ids, n_groups
            ).tolist()
            record.update(damping=damping.tolist(), at_bound=at_bound, clipped=clipped)
            record.update(solved=result.solved, converged=converged)
            state = EMState(
                state.step + 1,
                precision,
                sigma,
                result.mean,
                result.samples,
                [*state.history, record],
                converged,
            )
            if checkpoint is not None and is_main_process():
                save_checkpoint(checkpoint, state, fingerprint)
            bar.update()
            bar.set_postfix(alpha=f"{float(precision.mean()):.4g}")
    if not state.converged:
        _warn_unconverged(state, tol, pinned)
    return state


CHECKPOINT_KIND = "em-checkpoint"
FINGERPRINT_NAMES = {"weights": "the network's weights", "data": "the training data"}
"""How a mismatch in a fingerprint's entries is named (others by their key)."""


def save_checkpoint(path: str | Path, state: EMState, fingerprint: dict) -> None:
    """Atomically write ``state`` with the run's ``fingerprint``."""
    tensors = {"precision": state.precision, "mean": state.mean}
    if state.samples is not None:
        tensors["samples"] = state.samples
    meta = {
        "kind": CHECKPOINT_KIND,
        "fingerprint": fingerprint,
        "step": state.step,
        "sigma": state.sigma,
        "history": state.history,
        "converged": state.converged,
    }
    persistence.write(path, tensors, meta)


def load_checkpoint(
    path: str | Path, fingerprint: dict, dtype: torch.dtype, device: torch.device
) -> EMState:
    """The state saved in ``path``.

    Raises ``ValueError`` naming what differs if it was written by a run with another fingerprint
    (other weights, data or settings).
    """
    tensors, meta = persistence.read(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"{path} is not an EM checkpoint (it holds a {meta.get('kind')!r}); pass another "
            "`checkpoint` path."
        )
    persistence.check_fields(
        meta,
        {"fingerprint": dict, "step": int, "sigma": float, "history": list, "converged": bool},
        path,
    )
    saved = meta["fingerprint"]
    if "model" in saved and "model" in fingerprint:
        persistence.check_signature(saved["model"], fingerprint["model"], path)
    differs = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differs:
        raise ValueError(
            f"{path} was written by another EM run: it differs in "
            f"{', '.join(FINGERPRINT_NAMES.get(k, k) for k in differs)}. Resume with the same "
            "network, data and arguments, or pass another `checkpoint` path (or delete the file)."
        )
    samples = tensors.get("samples")
    return EMState(
        meta["step"],
        tensors["precision"],
        meta["sigma"],
        tensors["mean"].to(dtype=dtype, device=device),
        None if samples is None else samples.to(dtype=dtype, device=device),
        meta["history"],
        meta["converged"],
    )


def _guarded(e_step: Callable[[EMState], EStep], state: EMState) -> EStep:
    """Run an E-step; a failed factorisation becomes a :class:`DivergenceError` that says why."""
    try:
        return e_step(state)
    except torch.linalg.LinAlgError as err:
        raise DivergenceError(
            f"EM step {state.step + 1} at prior precision {state.precision.tolist()}: a "
            f"factorisation failed ({str(err).splitlines()[0]}). The precision is too extreme for "
            "the posterior to be represented; start from a moderate prior_precision (e.g. 1.0)."
        ) from err


def _warn_implausible(result: EStep, group_ids, n_groups, n_observations, state) -> None:
    gamma = result.gamma.double()
    sizes = group_sum(torch.ones_like(result.mean, dtype=torch.float64), group_ids, n_groups)
    bad = implausible_gamma(gamma, sizes, len(result.samples), n_observations)
    if bool(bad.any()):
        warnings.warn(
            f"EM step {state.step + 1} at prior precision {state.precision.tolist()}: the sampled "
            f"γ̂ = {gamma[bad].tolist()} exceeds what any posterior allows (at most "
            f"{sizes[bad].tolist()} weights, {n_observations} observations) by far more than its "
            "Monte-Carlo error, so the E-step's samples are far from converged and this step's "
            "(clipped) update is unreliable. Give the sampler more steps (e.g. "
            "solver=lla.SGD(n_epochs=...)) or start EM from a larger prior_precision, where H is "
            "better conditioned.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _warn_unconverged(state: EMState, tol: float, pinned: bool) -> None:
    last = state.history[-1]
    if pinned or last.get("at_bound"):
        why = (
            f"the prior precision reached the bound {PRECISION_RANGE} "
            f"({last['prior_precision']}) and MacKay's update points beyond it (at such a prior "
            "the posterior is the prior to float32 round-off). Start from a moderate "
            "prior_precision (e.g. 1.0), check the targets' scale, or fix prior_precision by hand"
        )
    elif last.get("clipped") or last.get("solved") is False:
        cause = (
            "its γ̂ was clipped to the feasible range"
            if last.get("clipped")
            else ("its samples missed their solver's tolerance")
        )
        why = (
            f"the last of {state.step} steps cannot count, as {cause}: such a step is no evidence "
            "of a fixed point. Give the sampler more steps (a larger solver budget) or raise "
            "n_em_samples, or use ExactLaplace where D allows"
        )
    else:
        why = (
            f"the last MacKay step in log α was still ≥ tol = {tol:g} after {state.step} steps. "
            "Raise max_iter (a sampled E-step's noise may also keep it above tol: raise "
            "n_em_samples or tol)"
        )
    warnings.warn(ConvergenceWarning(f"EM did not converge: {why}."), stacklevel=3)


def _record(step: int, precision: Tensor, sigma: float, start: float | None = None) -> dict:
    return {
        "step": step,
        "prior_precision": precision.tolist(),
        "sigma_noise": sigma,
        "seconds": 0.0 if start is None else time.perf_counter() - start,
    }
