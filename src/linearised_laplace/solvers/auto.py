r"""``solver="auto"``: the solver and space for a linear model, from its sizes alone.

The rules, in order (``D`` parameters, ``n·C`` observations):

1. **Cholesky** where a dense solve is cheap: in the primal space when building and factorising
   ``H`` (``2 n C D² + D³/3`` flops, ``D²`` floats) fits the budget, else in the dual space when
   ``I + LᵀKL`` does (``2 (nC)² D + (nC)³/3`` flops, ``nC·D`` floats). Exact to round-off.
2. Otherwise **the dual space** when ``n·C < D`` on one process (fewer unknowns), solved by
   preconditioned CG.
3. Otherwise **the primal space** with :data:`PRIMAL_SOLVER`: conjugate gradients preconditioned by
   the GGN's Nyström approximation plus its diagonal.

The choice depends on sizes only, never on the prior, so it does not change between EM steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..linear_model import LinearGaussianModel
from .cg import CG
from .cholesky import Cholesky
from .sdd import SDD
from .sgd import SGD

DENSE_FLOPS = 2e11
"""Largest dense solve ``auto`` takes (about a minute on two CPU cores)."""
DENSE_GIB = 2.0
"""Largest dense matrix ``auto`` builds (float64)."""
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
    for candidate in spaces:
        flops, gib = dense_cost(d, n_obs, candidate)
        if flops <= DENSE_FLOPS and gib <= DENSE_GIB:
            reason = (
                f"auto: Cholesky, a dense {candidate} solve is cheap ({sizes}, {flops:.1e} flops)"
            )
            return Choice(Cholesky(), candidate, reason)
    if space == "dual" or (space == "auto" and n_obs < d and not parallel):
        return Choice(DUAL_SOLVER, "dual", f"auto: preconditioned CG in the dual space ({sizes})")
    return Choice(PRIMAL_SOLVER, "primal", f"auto: preconditioned CG in the primal space ({sizes})")
