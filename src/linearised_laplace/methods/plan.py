r"""The cost plan: the path a fit will take, the memory it will hold and each stage's time.

:meth:`~linearised_laplace.methods.base.Laplace.plan` answers, before a long fit, whether it takes
a minute or an hour, and what would make it shorter.

- **An iterative sampler** (CG, SGD or SDD samples) is timed on a *pilot*: the same calls on a
  random fraction ``m/n`` of the training data, with the prior precision scaled by ``m/n``. The
  pilot's GGN is ``m/n`` of the full one's in expectation, so its posterior precision
  ``M_m + α m/n`` is the full one's shrunk by ``m/n``: its solves take the same iterations, while
  each data pass costs ``m/n`` of a full one. Its ``γ`` and mean are the full run's at ``α``, so
  EM's update, with ``γ`` scaled by ``m/n`` (:func:`~linearised_laplace.tuning.prior.scaled_gamma`),
  takes the full run's steps in shrunk units. Each stage is estimated as the pilot's times
  ``n/m``. Under the g-prior the rescaled features absorb the shrinking and ``α`` is kept (the
  scaled ``γ`` then offsets the rescaled mean's ``‖θ̄‖²``).
- **A dense solve** (Cholesky, and the exact family) costs ``O(P³)`` whatever ``n``: it is
  estimated from its flops at rates measured here, plus one batch's Jacobian timed and repeated
  over the batches; EM is costed at ``max_iter`` steps, an upper bound.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import torch

from ..core.memory import MemoryPlan, size_text
from ..core.progress import duration_text
from ..core.timing import timed
from ..model.data import TrainingData
from ..solvers.auto import choose_solver, dense_cost
from ..solvers.cholesky import Cholesky
from ..solvers.mean import MeanMode, mean_mode

PILOT_FRACTION = 0.1
"""The share of the training data a pilot runs on (at least two batches)."""
ADVICE_SECONDS = 180.0
"""Above this estimate the plan names the settings that would cut it."""


@dataclass(frozen=True)
class CostPlan:
    """What a fit will do and how long each stage will take.

    Attributes:
        method: The method's class name.
        path: The solver and space the fit will use, and why.
        memory: The :class:`~linearised_laplace.core.memory.MemoryPlan` (``Φ`` held or not).
        stages: Estimated ``{"seconds", "cpu_seconds"}`` per stage, named as ``la.em_costs``
            (``"set-up"``, ``"EM"``, ``"final samples"``), or ``"fit"`` alone.
        basis: How the estimate was made.
        em_steps: The EM steps the estimate assumes (``None`` without EM).
        advice: Settings that would cut a long estimate.
    """

    method: str
    path: str
    memory: MemoryPlan
    stages: dict[str, dict[str, float]]
    basis: str
    em_steps: int | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The estimated wall seconds of the whole fit."""
        return sum(s["seconds"] for s in self.stages.values())

    def summary(self) -> str:
        """A few lines: path, memory, each stage's estimate, the total and any advice."""
        stages = "; ".join(f"{k} ~{duration_text(v['seconds'])}" for k, v in self.stages.items())
        steps = "" if self.em_steps is None else f" ({self.em_steps} EM steps)"
        lines = [
            f"cost plan for {self.method}: {self.path}",
            self.memory.summary(),
            f"estimate: ~{duration_text(self.seconds)}{steps}: {stages}. {self.basis}",
        ]
        lines += [f"to cut it: {a}" for a in self.advice]
        return "\n".join(lines)

    __str__ = summary


def plan_fit(la, train_loader: TrainingData, em: dict | None, fraction: float) -> CostPlan:
    """The :class:`CostPlan` of ``la.fit`` (``em=None``) or of EM with keywords ``em``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}.")
    model = la.linear_model(train_loader)
    memory = la._plan_memory(model)  # a budget below the needs is refused here
    choice = None
    if hasattr(la.posterior, "solver"):
        choice = choose_solver(model, la.posterior.solver, la.posterior.space)
    if choice is None or isinstance(choice.solver, Cholesky):
        plan = dense_plan(la, model, memory, choice, em)
    else:
        plan = pilot_plan(la, model, memory, choice, em, fraction)
    return plan if plan.seconds < ADVICE_SECONDS else _with_advice(la, plan, choice, em)


def pilot_plan(la, model, memory: MemoryPlan, choice, em: dict | None, fraction: float):
    """Stage times of an iterative sampler: its calls on a shrunk pilot, times ``n/m``."""
    data = model.data
    n = len(data)
    m = min(n, max(math.ceil(fraction * n), 2 * data.batch_size))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(la.seed))
    loader = data.loader(order[:m])
    posterior = copy.copy(la.posterior)
    posterior.solver, posterior.space = choice.solver, choice.space
    posterior.forget()
    shrink = 1.0 if la.g_prior else m / n
    with _pilot(la, posterior, memory.hold_features, m / n):
        la._hyperparameters = la._hyperparameters.with_precision(
            la.prior_precision * shrink, *la.coordinates.groups()
        )
        if em is None:
            costs: dict[str, dict[str, float]] = {}
            with timed(costs, "fit"):
                la.fit(loader)
            steps = None
        else:
            la.optimize_prior_precision(loader, **em)
            costs, steps = dict(la.em_costs), len(la.em_history) - 1
    stages = {k: {u: v * n / m for u, v in c.items()} for k, c in costs.items()}
    basis = (
        f"Measured on a pilot of {m} of the {n} training points (prior shrunk to match), "
        f"scaled by {n / m:.3g}."
    )
    return CostPlan(type(la).__name__, choice.reason, memory, stages, basis, steps)


def dense_plan(la, model, memory: MemoryPlan, choice, em: dict | None) -> CostPlan:
    """Stage times of a dense solve, from its flops and one batch's Jacobian."""
    space = "primal" if choice is None else choice.space
    n_obs = len(model.data) * model.n_outputs
    build_flops, _ = dense_cost(model.n_params, n_obs, space)
    size = model.n_params if space == "primal" else n_obs
    factor_flops = size**3 / 3
    matmul_rate, cholesky_rate = _rates()
    _, x, _ = next(model.data.batches())
    timing: dict[str, dict[str, float]] = {}
    with timed(timing, "jacobian"):
        model.features.to_dense(x)
    jacobian = timing["jacobian"]
    passes = {u: v * model.data.n_batches for u, v in jacobian.items()}
    build = (build_flops - factor_flops) / matmul_rate
    factor = factor_flops / cholesky_rate
    setup = {u: passes[u] + build for u in passes}
    path = choice.reason if choice is not None else f"dense {space} posterior ({size} unknowns)"
    basis = (
        f"From one batch's Jacobian ({duration_text(jacobian['seconds'])}) and the flops of the "
        f"dense matrix ({build_flops:.1e}) and its factorisation ({factor_flops:.1e}) at the "
        "rates measured here"
    )
    if em is None:
        stages = {"fit": {u: setup[u] + factor for u in setup}}
        return CostPlan(type(la).__name__, path, memory, stages, basis + ".")
    steps = em.get("max_iter", 10)
    stages = {
        "set-up": setup,
        "EM": {u: steps * (factor + passes[u]) for u in passes},
        "final samples": dict.fromkeys(passes, factor),
    }
    basis += f"; EM at max_iter = {steps} steps, each a factorisation and a pass (an upper bound)."
    return CostPlan(type(la).__name__, path, memory, stages, basis, steps)


def _with_advice(la, plan: CostPlan, choice, em: dict | None) -> CostPlan:
    advice = []
    if not plan.memory.hold_features and plan.memory.features_gib < 64:
        budget = math.ceil(1.1 * plan.memory.total_gib + plan.memory.features_gib)
        advice.append(
            f"hold the features Φ ({size_text(plan.memory.features_gib)}): memory_gib={budget} "
            "makes every data pass a matrix product instead of a network pass"
        )
    if choice is None or isinstance(choice.solver, Cholesky):
        advice.append(
            "SampledLaplace with lla.CG() avoids the O(P³) factorisations; parameters='last_layer' "
            "or SubnetworkLaplace shrinks P"
        )
    if em is not None:
        advice.append(
            "fewer EM steps (max_iter, a looser tol) or fewer samples per step (n_em_samples)"
        )
        if mean_mode(em.get("mean", "auto"), la.likelihood, la.g_prior) is not MeanMode.NETWORK:
            advice.append("mean='network' skips the mean solve of every EM step")
    return CostPlan(**{**plan.__dict__, "advice": advice})


def _rates(size: int = 768) -> tuple[float, float]:
    """Flops per second of a float64 matrix product and Cholesky factorisation (a dense solve's)."""
    a = torch.randn(size, size, dtype=torch.float64)
    spd = a @ a.T + size * torch.eye(size, dtype=torch.float64)
    rates = []
    for fn, flops in (
        (lambda: a @ a, 2 * size**3),
        (lambda: torch.linalg.cholesky(spd), size**3 / 3),
    ):
        fn()
        start = time.perf_counter()
        fn()
        rates.append(flops / max(time.perf_counter() - start, 1e-9))
    return rates[0], rates[1]


@contextlib.contextmanager
def _pilot(la, posterior, hold_features: bool, share: float):
    """Run a pilot on ``la`` itself, restoring its state (fit, priors, history) afterwards."""
    names = ("posterior", "coordinates", "_hyperparameters", "feature_memory_gib", "progress")
    names += ("em_history", "em_costs", "memory_plan", "_unfitted_reason", "_training")
    names += ("_gamma_scale",)
    saved = {k: getattr(la, k) for k in names if hasattr(la, k)}
    la.posterior, la.progress, la._gamma_scale = posterior, False, share
    la.coordinates = copy.copy(la.coordinates)
    la.coordinates.forget()
    la.feature_memory_gib = None if hold_features else 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for k in names:
            if k in saved:
                setattr(la, k, saved[k])
            elif hasattr(la, k):
                delattr(la, k)
