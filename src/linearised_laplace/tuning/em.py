r"""Expectation-maximisation of the prior precision: the guarded MacKay loop.

Each step runs a posterior backend's E-step (:mod:`~linearised_laplace.posteriors.expectation`:
the mean ``θ̄`` and ``γ``, exact or from samples) and MacKay's update
(:mod:`~linearised_laplace.tuning.mackay`). The loop is guarded against extreme priors
(:func:`run_em`): each group's step in ``log α`` (and the noise update's in ``log σ``) follows the
secant on MacKay's step where it reverses direction (interpolating inside the bracket, so an
oscillation lands instead of cycling) or where a monotone approach creeps (extrapolating;
:func:`~linearised_laplace.tuning.mackay.secant_step`); ``α`` stays within
:data:`~linearised_laplace.tuning.mackay.PRECISION_RANGE`, a non-finite update or a failed
factorisation ends the run with a :class:`~linearised_laplace.DivergenceError`, and a run
that stops at ``max_iter`` or at the bound warns with a
:class:`~linearised_laplace.ConvergenceWarning`, as does a sampled ``γ̂`` no posterior can have.
Each history entry records MacKay's ``proposed`` α, the ``secant`` factor of the step taken (in
multiples of MacKay's), and whether the run had ``converged`` (with ``σ`` learnt, also
``proposed_sigma``, ``sigma_secant`` and ``sigma_distance``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ..core.checks import check_positive_int
from ..core.distributed import is_main_process
from ..core.progress import expect_total, progress_bar
from ..exceptions import ConvergenceWarning, DivergenceError
from ..posteriors.expectation import EStep
from ..posteriors.gamma import group_sum
from .checkpoint import load_checkpoint, save_checkpoint
from .mackay import (
    PRECISION_RANGE,
    SIGMA_KEYS,
    clipped_gamma,
    implausible_gamma,
    mackay_update,
    noise_update,
    secant_step,
)
from .state import EMState


def check_em_settings(max_iter: int, tol: float) -> None:
    """Validate EM settings before any work."""
    check_positive_int("max_iter", max_iter)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be > 0 (a change in log α), got {tol!r}.")


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
    """Alternate E-steps and MacKay updates from ``state`` until converged to ``tol`` or ``max_iter``.

    Args:
        e_step: Computes ``θ̄``, ``γ`` (and samples) at the state's hyperparameters.
        state: Where to start (a fresh state, or one loaded from a checkpoint).
        group_ids: ``[D]`` prior group of each coordinate.
        max_iter: Total EM steps, counting those already in ``state``.
        tol: Stop when every group's estimated distance to the fixed point in ``log α`` and
            that in ``log σ`` are below this: the last update, or on a creeping approach the
            secant's estimate (:func:`~linearised_laplace.tuning.mackay.secant_distance`).
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
    pinned, first, since = False, None, state.step + 1
    with progress_bar(total=max_iter, initial=state.step, enabled=progress, desc="EM") as bar:
        while state.step < max_iter and not state.converged and not pinned:
            start = time.perf_counter(), time.process_time()
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
            precision, secant, at_bound, distance = secant_step(
                state.precision, proposed, state.history
            )
            sigma, noise, change = state.sigma, None, float(distance.max())
            if update_sigma and n_observations is not None and result.residual_sq is not None:
                target = noise_update(result.residual_sq, n_observations, float(result.gamma.sum()))
                now = torch.tensor([state.sigma], dtype=torch.float64)
                noise = secant_step(now, now.new_tensor([target]), state.history, SIGMA_KEYS)
                sigma, change = float(noise.precision[0]), max(change, float(noise.distance[0]))
            first = change if first is None else first
            expect_total(bar, state.step + 1, first, change, tol, max_iter, since)
            pinned = at_bound and bool(torch.equal(precision, state.precision))
            clipped = bool((gamma != result.gamma).any())
            # a clipped γ̂ or unconverged samples give no evidence of a fixed point
            converged = change < tol and not at_bound and not clipped and result.solved
            record = _record(state.step + 1, precision, sigma, start)
            record["gamma"] = result.gamma.tolist()
            record["mean_norm_sq"] = group_sum(
                result.mean.double().square(), group_ids, n_groups
            ).tolist()
            record.update(proposed=proposed.tolist(), secant=secant.tolist())
            if noise is not None:
                record.update(proposed_sigma=[target], sigma_secant=noise.secant.tolist())
                record["sigma_distance"] = float(noise.distance[0])
            record["distance"] = distance.tolist()
            record.update(at_bound=at_bound, clipped=clipped)
            record.update(solved=result.solved, solve_steps=result.solve_steps, converged=converged)
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
            f"the estimated distance to the fixed point in log α was still ≥ tol = {tol:g} after "
            f"{state.step} steps (the history's `distance`). "
            "Raise max_iter (a sampled E-step's noise may also keep it above tol: raise "
            "n_em_samples or tol)"
        )
    warnings.warn(ConvergenceWarning(f"EM did not converge: {why}."), stacklevel=3)


def _record(step: int, precision: Tensor, sigma: float, start: tuple | None = None) -> dict:
    """A history entry; ``start``: the step's ``(wall, CPU)`` clocks at its start."""
    wall, cpu = (0.0, 0.0)
    if start is not None:
        wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    return {
        "step": step,
        "prior_precision": precision.tolist(),
        "sigma_noise": sigma,
        "seconds": wall,
        "cpu_seconds": cpu,
    }
