"""What a posterior backend contributes to EM: its E-step at given hyperparameters, and its refit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from ..core.lowrank import LowRank
from ..solvers.mean import MeanProblem


class Iterate(Protocol):
    """The hyperparameters and warm starts at which an E-step runs (an EM state).

    Attributes:
        step: Completed EM steps (seeds the step's randomness).
        precision: ``[G]`` prior precision; ``sigma``: Gaussian noise (1 for classification).
        mean: ``[D]`` the last ``θ̄`` (warm start); ``samples``: ``[K, D]`` the last samples, if any.
    """

    step: int
    precision: Tensor
    sigma: float
    mean: Tensor
    samples: Tensor | None


@dataclass(frozen=True)
class EStep:
    """What an E-step returns.

    Attributes:
        mean: ``[D]`` the posterior mean ``θ̄`` at the current hyperparameters.
        gamma: ``[G]`` the (estimated) effective dimensions.
        samples: ``[K, D]`` posterior samples (warm start of the next step), if any.
        residual_sq: ``‖y − g(θ̄)‖²`` over the training set (for the noise update), if computed.
        positive_gamma: ``γ̂`` is positive by construction (the function-space estimate), so it
            is not floored at 1 (see :func:`~linearised_laplace.tuning.mackay.mackay_update`).
        solved: Every sample solve reached its solver's tolerance (a step whose samples did not
            never counts toward EM's convergence).
        solve_steps: The sample solve's iterations (CG iterations, SGD steps), if it iterated.
    """

    mean: Tensor
    gamma: Tensor
    samples: Tensor | None = None
    residual_sq: float | None = None
    positive_gamma: bool = False
    solved: bool = True
    solve_steps: int | None = None


@dataclass(frozen=True)
class Expectation:
    """A posterior's part in EM.

    Attributes:
        step: The E-step at a state's hyperparameters.
        refit: Refits the posterior at the final state, drawing this many samples.
        settings: What else determines the run's result (JSON; part of the checkpoint fingerprint).
        estimated: ``γ`` is a sampled estimate, so EM clips it (see :func:`~linearised_laplace.tuning.mackay.mackay_update`).
        sketch: The GGN's low-rank sketch the backend already holds (``None``: none), from which
            EM may take its start (:func:`~linearised_laplace.tuning.mackay.sketch_start`).
        ggn_diag: ``[D]`` the backend's estimate of ``diag(M)`` (``None``: none), which completes
            the sketch's start where EM's mean is ``θ*``.
    """

    step: Callable[[Iterate], EStep]
    refit: Callable[[Iterate, int], None]
    settings: dict = field(default_factory=dict)
    estimated: bool = True
    sketch: LowRank | None = None
    ggn_diag: Tensor | None = None


MeanSolve = Callable[[MeanProblem, Tensor, Tensor, int], Tensor]
"""``(problem, init, preconditioner, seed) ↦ θ̄``."""
