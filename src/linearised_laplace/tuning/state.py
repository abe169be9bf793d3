"""The state of an EM run: what a checkpoint holds and a resumed run starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


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
            ``gamma``, ``mean_norm_sq``, ``sigma_noise``, ``proposed`` (MacKay's update),
            ``secant`` (per group, the fraction of the MacKay step in ``log α`` taken),
            ``distance`` (to the fixed point, estimated), ``at_bound``, ``clipped`` (the estimated ``γ̂``
            was clipped), ``solved`` (every sample solve reached its tolerance), ``solve_steps``
            (the sample solve's iterations, if it iterated), ``converged``, ``seconds`` and
            ``cpu_seconds`` (the step's wall and process CPU time); entry 0 holds the start.
        converged: Whether the stopping rule fired.
    """

    step: int
    precision: Tensor
    sigma: float
    mean: Tensor
    samples: Tensor | None = None
    history: list[dict] = field(default_factory=list)
    converged: bool = False
