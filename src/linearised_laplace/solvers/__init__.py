"""Solvers for the linear systems ``H ζ_k = A θⁿ_k`` that define posterior samples."""

from .base import SolveInfo, SolveResult, relative_residual
from .cg import CG
from .cholesky import Cholesky
from .sdd import SDD
from .sgd import SGD, Objective, sample_then_optimise

Solver = SGD | CG | Cholesky | SDD

__all__ = [
    "CG",
    "SDD",
    "SGD",
    "Cholesky",
    "Objective",
    "SolveInfo",
    "SolveResult",
    "Solver",
    "relative_residual",
    "sample_then_optimise",
]
