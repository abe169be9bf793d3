r"""Sampled linearised Laplace (Antorán et al., ICLR 2023): posterior samples by sample-then-optimise.

Memory is ``O(S·D)`` and each SGD step costs one JVP and one VJP per sample on a minibatch; no
``D×D`` matrix is ever formed, and the Jacobian only where it fits in ``memory_gib``. The
prior precision is learnt by sample-based EM.
"""

from __future__ import annotations

from pathlib import Path

from ..posteriors.sampled import SampledPosterior
from ..solvers import SGD, Solver
from ..solvers.auto import sampler_keywords
from ..solvers.newton import Newton
from .base import Laplace


class SampledLaplace(Laplace):
    r"""Linearised Laplace with posterior samples drawn by sample-then-optimise.

    ``fit`` draws ``S`` zero-mean samples ``ζ_s ~ N(0, H^{-1})``, ``H = JᵀBJ + A``, each the minimiser
    of a randomised quadratic solved with JVPs and VJPs only; ``optimize_prior_precision`` learns
    ``α`` by sample-based EM (``gamma=``, ``n_em_samples=``). Where ``auto`` finds a dense solve
    cheap (Cholesky), ``Σ`` is known exactly, and EM's ``γ`` and the functional covariance come
    from it rather than from the samples.

    Args:
        model, likelihood, **kwargs: As for :class:`~linearised_laplace.methods.base.Laplace`.
        solver: ``"auto"`` (default; Cholesky where a dense solve is cheap, else preconditioned CG:
            :func:`~linearised_laplace.solvers.auto.choose_solver`), ``lla.SGD(...)`` (primal
            only), ``lla.SDD(...)`` (dual only), ``lla.CG(...)`` or ``lla.Cholesky()``.
        mean_solver: For the mean in EM: ``lla.Newton(...)`` (default; full-batch Newton-CG,
            precise) or ``lla.SGD(...)`` (minibatch, as Antorán et al., 2023).
        space: ``"primal"`` (``K × D`` unknowns), ``"dual"`` (``K × n·C`` unknowns, pathwise
            conditioning; :mod:`linearised_laplace.solvers.dual`) or ``"auto"`` (default: dual
            when ``n·C < D``, unless SGD; always for SDD). Both give the same samples for a seed.
        strict: Raise :class:`~linearised_laplace.ConvergenceError` instead of warning
            (:class:`~linearised_laplace.ConvergenceWarning`) when a solve ends above its tolerance.

    Attributes:
        solve_info: The last solve: the solver and space that ran and why, steps, each sample's
            relative residual against the tolerance, time.

    Example:
        >>> import torch, linearised_laplace as lla
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> la = lla.SampledLaplace(net, "classification", n_samples=8, solver=lla.SGD(n_epochs=5))
        >>> la.fit((x, y)).predictive_samples(x[:5]).shape
        torch.Size([8, 5, 3])
    """

    def __init__(
        self,
        model,
        likelihood="classification",
        *,
        solver: Solver | str | None = "auto",
        mean_solver: Newton | SGD | None = None,
        space: str = "auto",
        strict: bool = False,
        **kwargs,
    ):
        posterior = SampledPosterior(solver, mean_solver, space, strict)
        super().__init__(model, likelihood, posterior=posterior, **kwargs)

    solver = property(lambda self: self.posterior.solver, doc="The samples' solver (None: auto).")
    solve_info = property(lambda self: self.posterior.solve_info, doc="The last solve's report.")

    @classmethod
    def settings_from(cls, meta: dict, path: str | Path) -> dict:  # noqa: D102
        return sampler_keywords(meta, path)
