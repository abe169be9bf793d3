"""What every solver returns: the samples and how well they solve their linear systems."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..linear_model import LinearGaussianModel


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
    """

    solver: str
    n_steps: int
    rel_residual: Tensor
    wall_time: float
    top_eigenvalue: float | None = None


@dataclass(frozen=True)
class SolveResult:
    """Zero-mean posterior samples ``[K, D]`` and the solve's diagnostics."""

    samples: Tensor
    info: SolveInfo


def relative_residual(model: LinearGaussianModel, samples: Tensor, rhs: Tensor) -> Tensor:
    """``‖H ζ_k − b_k‖ / ‖b_k‖`` over the full training set (one pass): ``[K]``."""
    residual = model.precision_vec(samples) - rhs
    return residual.norm(dim=-1) / rhs.norm(dim=-1).clamp_min(1e-300)
