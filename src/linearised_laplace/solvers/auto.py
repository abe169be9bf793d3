r"""``solver="auto"``: the solver and space for a linear model, from its sizes alone.

The rules, in order (``D`` parameters, ``n·C`` observations):

1. **Cholesky** where a dense solve is cheap: building and factorising ``H`` in the primal space
   (``2 n C D² + D³/3`` flops, ``D²`` floats) or ``I + LᵀKL`` in the dual space
   (``2 (nC)² D + (nC)³/3`` flops, ``nC·D`` floats) within the budget. Where both fit, the primal
   solve runs unless the dual one costs under half its flops (:data:`DUAL_ADVANTAGE`: the flop
   counts leave out the passes that build each matrix). Exact to round-off.
2. Otherwise **the dual space** when ``n·C < D`` on one process (fewer unknowns), solved by
   preconditioned CG.
3. Otherwise **the primal space** with :data:`PRIMAL_SOLVER`: conjugate gradients preconditioned by
   the GGN's Nyström approximation plus its diagonal.

The choice depends on sizes only, never on the prior, so it does not change between EM steps.
:func:`solve_samples` runs a choice (with the noise of :func:`choice_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..core import persistence
from ..core.lowrank import LowRank
from ..core.memory import GIB, gib
from ..core.progress import progress_note
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource, PosteriorNoise, draw_posterior_noise
from ..network.linearisation import JACOBIAN_BYTES
from .base import SolveResult, check_convergence
from .cg import CG
from .cholesky import Cholesky
from .dual import solve_dual
from .newton import Newton
from .preconditioner import sketch_ranks, with_ggn_sketch
from .sdd import SDD
from .sgd import SGD

SPACES = ("auto", "primal", "dual")
SOLVERS = {"SGD": SGD, "CG": CG, "SDD": SDD, "Cholesky": Cholesky, "Newton": Newton}

DENSE_FLOPS = 2e11
"""Largest dense solve ``auto`` takes (about a minute on two CPU cores)."""
DENSE_GIB = 2.0
"""Largest dense matrix ``auto`` builds (float64)."""
DUAL_ADVANTAGE = 2.0
"""How many times fewer flops a dense dual solve needs before ``auto`` prefers it to a primal one."""
PRIMAL_SOLVER = CG()
DUAL_SOLVER = CG()


@dataclass(frozen=True)
class Choice:
    """A solver, the space it runs in and why."""

    solver: SGD | SDD | CG | Cholesky
    space: str
    reason: str


def dense_cost(n_params: int, n_obs: int, space: str) -> tuple[float, float]:
    """``(flops, GiB)`` of a dense Cholesky solve in ``space``."""
    if space == "primal":
        return 2.0 * n_obs * n_params**2 + n_params**3 / 3, n_params**2 * 8 / 2**30
    return 2.0 * n_obs**2 * n_params + n_obs**3 / 3, n_obs * (n_obs + n_params) * 8 / 2**30


def choose_solver(
    model: LinearGaussianModel, solver: SGD | SDD | CG | Cholesky | None, space: str = "auto"
) -> Choice:
    """Resolve ``solver=None`` (auto) and ``space="auto"`` for ``model``.

    A given solver keeps ``space``; under ``"auto"`` SGD runs in the primal space, SDD in the
    dual, and CG or Cholesky in the dual when ``n·C < D`` on one process.

    Args:
        model: The linear-Gaussian model.
        solver: A solver, or ``None`` for the automatic choice.
        space: ``"auto"``, ``"primal"`` or ``"dual"``.
    """
    d, n_obs = model.n_params, len(model.data) * model.n_outputs
    parallel = model.data.shard.world > 1
    sizes = f"D = {d}, n·C = {n_obs}"
    if solver is not None:
        if space == "auto" and isinstance(solver, SDD | SGD):
            space = "dual" if isinstance(solver, SDD) else "primal"
        elif space == "auto":
            space = "dual" if n_obs < d and not parallel else "primal"
        return Choice(solver, space, f"{type(solver).__name__} as given, {space} space ({sizes})")
    spaces = ("primal", "dual") if space == "auto" else (space,)
    if parallel:
        spaces = ("primal",)
    costs = {candidate: dense_cost(d, n_obs, candidate) for candidate in spaces}
    cheap = {
        s: flops for s, (flops, gib) in costs.items() if flops <= DENSE_FLOPS and gib <= DENSE_GIB
    }
    if cheap:
        candidate = next(iter(cheap))
        if "dual" in cheap and cheap["dual"] * DUAL_ADVANTAGE < cheap.get("primal", float("inf")):
            candidate = "dual"
        flops = cheap[candidate]
        reason = f"auto: Cholesky, a dense {candidate} solve is cheap ({sizes}, {flops:.1e} flops)"
        return Choice(Cholesky(), candidate, reason)
    if space == "dual" or (space == "auto" and n_obs < d and not parallel):
        return Choice(DUAL_SOLVER, "dual", f"auto: preconditioned CG in the dual space ({sizes})")
    return Choice(PRIMAL_SOLVER, "primal", f"auto: preconditioned CG in the primal space ({sizes})")


SOLVER_STATE = 6
"""``[S, ·]`` tensors an iterative solve holds: samples, right-hand sides and its own state."""


def solver_memory(model: LinearGaussianModel, choice: Choice, n_samples: int) -> dict[str, float]:
    """GiB of what ``choice`` holds to draw ``n_samples`` samples of ``model``, by name.

    A dense solve holds its matrix and factorisation; an iterative one its samples and state
    (:data:`SOLVER_STATE` ``× [S, D]``, or ``[S, n·C]`` in the dual space) and its preconditioner's
    sketch. Every data pass may build one batch's Jacobian (up to the tangent batching's cap).
    """
    d, n_obs, dtype = model.n_params, len(model.data) * model.n_outputs, model.features.dtype
    needs = {"one batch's Jacobian": min(model.batch_jacobian_gib, JACOBIAN_BYTES / GIB)}
    if isinstance(choice.solver, Cholesky):
        _, matrix = dense_cost(d, n_obs, choice.space)
        if choice.space == "primal":
            factor = gib(d * d, torch.float64)
            return {**needs, "dense primal matrix and its Cholesky factor": matrix + factor}
        # beside Lᵀ Φ and I + QᵀQ: the factor, Q and, once predicting, Σ's eigenbasis
        basis = gib(n_obs * (n_obs + d), torch.float64)
        return {**needs, "dense dual matrix, its factor and Σ": matrix + basis}
    primal = choice.space == "primal"
    width = d if primal else n_obs
    rank = (
        choice.solver.sketch_rank(model)
        if primal
        else getattr(choice.solver, "preconditioner_rank", 0)
    )
    rank = sketch_ranks(rank, width, d if primal else None)[1]  # an "auto" sketch may grow
    needs["samples and solver state"] = gib(SOLVER_STATE * n_samples * width, dtype)
    needs["preconditioner sketch"] = gib(2 * rank * width, dtype)
    return needs


def check_solver(solver: object, space: str) -> SGD | SDD | CG | Cholesky | None:
    """Validate a sampler's ``solver`` (``"auto"`` or ``None``: automatic) and ``space``."""
    if space not in SPACES:
        raise ValueError(f"`space` must be one of {SPACES}, got {space!r}.")
    if solver == "auto":
        solver = None
    if solver is not None and not isinstance(solver, SGD | SDD | CG | Cholesky):
        raise TypeError(
            f"`solver` must be 'auto', lla.SGD(...), lla.SDD(...), lla.CG(...) or "
            f"lla.Cholesky(), got {solver!r}."
        )
    if space == "dual" and isinstance(solver, SGD):
        raise ValueError(
            "The dual space (space='dual') is solved by lla.CG(...), lla.SDD(...) or "
            "lla.Cholesky(), not SGD (its minibatch counterpart there is lla.SDD)."
        )
    if space == "primal" and isinstance(solver, SDD):
        raise ValueError(
            "lla.SDD solves the dual (observation-space) system only; use space='dual' (or "
            "'auto'), or lla.SGD(...) for minibatch solves in the primal space."
        )
    return solver


def choice_noise(
    model: LinearGaussianModel,
    choice: Choice,
    n_samples: int,
    seed: int,
    sketch: LowRank | None = None,
    progress: bool | None = None,
) -> PosteriorNoise:
    """The noise of ``n_samples`` samples, with the GGN sketch a primal solver preconditions with.

    ``sketch``: one already taken of this model's GGN (it does not depend on the prior).
    """
    noise = draw_posterior_noise(model, n_samples, NoiseSource(seed), progress)
    if choice.space == "primal" and not isinstance(choice.solver, Cholesky):
        rank = choice.solver.sketch_rank(model)
        noise = with_ggn_sketch(model, replace(noise, ggn_low_rank=sketch), rank, seed)
    return noise


def solve_samples(
    model: LinearGaussianModel,
    noise: PosteriorNoise,
    choice: Choice,
    init: Tensor | None,
    seed: int,
    strict: bool = False,
    progress: bool | None = None,
) -> tuple[SolveResult, Tensor]:
    """Samples in the chosen space (checked for convergence), and the warm start of a next solve."""
    progress_note(choice.reason, enabled=progress)
    if choice.space == "dual":
        result, warm = solve_dual(
            model, noise.xi, noise.source, choice.solver, init=init, seed=seed, progress=progress
        )
    else:
        result = choice.solver.solve(model, noise, init=init, seed=seed, progress=progress)
        warm = result.samples
    info = replace(result.info, reason=choice.reason)
    check_convergence(info, choice.solver.advice, strict)
    return replace(result, info=info), warm


def draw_samples(
    model: LinearGaussianModel,
    choice: Choice,
    n_samples: int,
    seed: int,
    strict: bool = False,
    warm: Tensor | None = None,
    sketch: LowRank | None = None,
    progress: bool | None = None,
) -> SolveResult:
    """``n_samples`` samples of ``seed``'s noise; ``warm``: samples of the same noise to start from.

    Samples share noise by index, so the first rows of a primal solve warm-start exactly.
    """
    noise = choice_noise(model, choice, n_samples, seed, sketch, progress)
    init = None
    if warm is not None and choice.space == "primal":
        init = noise.theta0(model.precision.prior).clone()
        init[: len(warm)] = warm[: len(init)]
    return solve_samples(model, noise, choice, init, seed, strict, progress)[0]


def check_sharding(solver: SGD | SDD | CG | Cholesky | None, space: str) -> None:
    """Raise if ``solver`` in ``space`` cannot run sharded over ``torch.distributed`` ranks."""
    if space == "dual" or isinstance(solver, SDD):
        raise ValueError(
            "The dual space (space='dual', or lla.SDD) keeps one unknown per observation and "
            "is not sharded over ranks; under torch.distributed use space='primal' (or "
            "'auto', which then picks it) with another solver."
        )


def sampler_settings(solver, mean_solver, space: str, strict: bool) -> dict:
    """A sampler's configuration as a saved file records it (JSON)."""
    return {
        "solver": None if solver is None else persistence.solver_settings(solver),
        "mean_solver": persistence.solver_settings(mean_solver),
        "space": space,
        "strict": strict,
    }


def sampler_keywords(meta: dict, path) -> dict:
    """The keywords ``solver``, ``mean_solver``, ``space``, ``strict`` from :func:`sampler_settings`."""
    schema = {"solver": (dict, type(None)), "mean_solver": dict, "space": frozenset(SPACES)}
    persistence.check_fields(meta, {**schema, "strict": bool}, path)
    solver = meta["solver"]
    solver = None if solver is None else persistence.build_config(solver, SOLVERS, "solver", path)
    means = {"Newton": Newton, "SGD": SGD}
    mean_solver = persistence.build_config(meta["mean_solver"], means, "mean_solver", path)
    return {
        "solver": solver,
        "mean_solver": mean_solver,
        "space": meta["space"],
        "strict": meta["strict"],
    }
