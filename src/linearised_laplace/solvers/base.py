"""What every solver returns: the samples and how well they solve their linear systems."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..core.checks import as_int
from ..exceptions import ConvergenceError, ConvergenceWarning
from ..model.linear_model import LinearGaussianModel
from .covariance import Covariance


@dataclass(frozen=True)
class SolveInfo:
    """Diagnostics of a solve.

    Attributes:
        solver: Solver name.
        n_steps: Iterations (SGD steps, CG iterations; 0 for a direct solve).
        rel_residual: ``[K]`` relative residuals ``‖H ζ_k − A θⁿ_k‖ / ‖A θⁿ_k‖``, i.e. the final
            gradient norm of each sample's objective relative to its value at zero.
        wall_time: Seconds.
        top_eigenvalue: SGD's estimate ``λ̂`` of the largest eigenvalue of the (preconditioned)
            minibatch precision, which sets its step size; ``None`` for other solvers.
        space: ``"primal"`` (weight space) or ``"dual"`` (observation space).
        tolerance: The largest ``error_estimate`` (or, without one, ``rel_residual``) that counts
            as converged (``None``: not checked).
        error_estimate: ``[K]`` SGD's relative residual in its preconditioner's inverse norm,
            which approximates each sample's relative error in the energy norm; ``None`` for
            solvers whose ``rel_residual`` is checked.
        reason: Why this solver and space ran (``solver="auto"`` states its choice here).
        preconditioner_rank: The rank of the GGN sketch a primal CG preconditioned with
            (``None``: none, or another solver).
    """

    solver: str
    n_steps: int
    rel_residual: Tensor
    wall_time: float
    top_eigenvalue: float | None = None
    space: str = "primal"
    tolerance: float | None = None
    reason: str = ""
    error_estimate: Tensor | None = None
    preconditioner_rank: int | None = None

    @property
    def checked(self) -> Tensor:
        """``[K]``: what the tolerance applies to (``error_estimate``, else ``rel_residual``)."""
        return self.rel_residual if self.error_estimate is None else self.error_estimate

    @property
    def converged(self) -> bool:
        """Every sample is within the tolerance (unchecked solves count as converged)."""
        return self.tolerance is None or bool((self.checked <= self.tolerance).all())

    def summary(self) -> str:
        """One line: solver, space, steps, worst residual (and error estimate), sketch rank, time."""
        worst = float(self.rel_residual.max()) if self.rel_residual.numel() else math.nan
        text = f"{self.solver} in {self.space} space: {self.n_steps} steps, worst relative residual {worst:.1e}"
        if self.error_estimate is not None:
            text += f", worst error estimate {float(self.error_estimate.max()):.1e}"
        if self.tolerance is not None:
            text += f" (tol {self.tolerance:.0e})"
        if self.preconditioner_rank is not None:
            text += f", rank-{self.preconditioner_rank} Nyström preconditioner"
        return f"{text}, {self.wall_time:.1f} s"


@dataclass(frozen=True)
class SolveResult:
    """Zero-mean posterior samples ``[K, D]`` and the solve's diagnostics.

    ``ggn_samples``: ``M ζ_k`` ``[K, D]`` where the solver computed it for its final residual
    (so that EM's function-space ``γ̂`` needs no extra data pass), else ``None``.
    ``covariance``: the exact ``Σ = H^{-1}`` where the solve factorised a dense matrix
    (:mod:`~linearised_laplace.solvers.covariance`), else ``None``.
    """

    samples: Tensor
    info: SolveInfo
    ggn_samples: Tensor | None = None
    covariance: Covariance | None = None


def relative_residual(model: LinearGaussianModel, samples: Tensor, rhs: Tensor) -> Tensor:
    """``‖H ζ_k − b_k‖ / ‖b_k‖`` over the full training set (one pass): ``[K]``."""
    return relative_norm(model.precision.matvec(samples) - rhs, rhs)


def relative_norm(residual: Tensor, rhs: Tensor) -> Tensor:
    """``‖r_k‖ / ‖b_k‖`` row-wise: ``[K]``."""
    return residual.norm(dim=-1) / rhs.norm(dim=-1).clamp_min(torch.finfo(rhs.dtype).tiny)


def check_convergence(info: SolveInfo, fix: str, strict: bool = False) -> None:
    """Warn (or raise under ``strict``) when a solve's worst residual exceeds its tolerance.

    Args:
        info: The solve's diagnostics.
        fix: What to change, e.g. ``"raise lla.SGD(n_epochs=...)"``.
        strict: Raise :class:`~linearised_laplace.ConvergenceError` instead of warning.
    """
    if info.converged:
        return
    worst = float(info.checked.nan_to_num(math.inf).max())
    n_bad = int((~(info.checked <= info.tolerance)).sum())
    what = "relative residual" if info.error_estimate is None else "error estimate"
    message = (
        f"{info.solver} did not converge: {n_bad} of {info.checked.numel()} samples ended "
        f"above the {what} tolerance {info.tolerance:.0e} (worst {worst:.2e}), so the "
        f"samples, and any EM step that uses them, are inexact. {fix}"
    )
    if strict:
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=4)


def check_settings(
    solver: str,
    config: object,
    *,
    positive_ints: tuple[str, ...] = (),
    non_negative_ints: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    intervals: dict[str, str] | None = None,
) -> None:
    """Refuse dataclass settings that cannot work, naming the setting, its range and the value.

    ``intervals`` maps a setting to ``"(0, 1]"`` or ``"[0, 1)"``. A setting may be ``None`` only if
    its default is ``None``.
    """
    defaults = {f.name: f.default for f in fields(config)}

    def check(name: str, ok, expected: str) -> None:
        value = getattr(config, name)
        if value is None and defaults[name] is None:
            return
        if not isinstance(value, int) and as_int(value) is not None:  # a numpy or torch integer
            value = as_int(value)
            object.__setattr__(config, name, value)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and ok(value)):
            optional = " or None" if defaults[name] is None else ""
            raise ValueError(f"{solver} `{name}` must be {expected}{optional}, got {value!r}.")

    for name in positive_ints:
        check(name, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    for name in non_negative_ints:
        check(name, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    for name in positive:
        check(name, lambda v: 0 < v < math.inf, "a finite number > 0")
    for name, text in (intervals or {}).items():
        low, high = (float(t) for t in text[1:-1].split(","))
        if text.startswith("["):
            check(name, lambda v, lo=low, hi=high: lo <= v < hi, f"in {text}")
        else:
            check(name, lambda v, lo=low, hi=high: lo < v <= hi, f"in {text}")


PRECONDITIONERS = ("nystrom", "kfac")
"""The primal solvers' preconditioners of ``H``: a Nyström sketch of ``M``, or KFAC."""


def check_preconditioner(solver: str, value: object) -> None:
    """Refuse an unknown ``preconditioner`` name."""
    if value not in PRECONDITIONERS:
        raise ValueError(
            f"{solver} `preconditioner` must be one of {PRECONDITIONERS}, got {value!r}."
        )
