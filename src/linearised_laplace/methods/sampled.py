r"""Sampled linearised Laplace (Antorán et al., ICLR 2023): posterior samples by sample-then-optimise.

Memory is ``O(S·D)`` and each SGD step costs one JVP and one VJP per sample on a minibatch; no
``D×D`` matrix is ever formed, and the Jacobian only where it fits in ``feature_memory_gib``. The
prior precision is learnt by sample-based EM.
"""

from __future__ import annotations

from pathlib import Path

from ..posteriors.sampled import SampledPosterior
from ..solvers import SGD, SolveInfo, Solver
from ..solvers.newton import Newton
from .base import Laplace


class SampledLaplace(Laplace):
    r"""Linearised Laplace with posterior samples drawn by sample-then-optimise.

    ``fit`` draws ``S`` zero-mean samples ``ζ_s ~ N(0, H^{-1})``, ``H = JᵀBJ + A``, each the minimiser
    of a randomised quadratic solved by minibatch SGD using only JVPs and VJPs.
    ``optimize_prior_precision`` learns ``α`` by sample-based EM (``gamma=``, ``n_em_samples=``).

    Args:
        model: Trained network (see :class:`~linearised_laplace.methods.base.Laplace` for the
            shared keywords ``likelihood``, ``prior_precision``, ``sigma_noise``, ``n_samples``,
            ``seed``, ``parameters``, ``exclude_norm``, ``g_prior``, ``tangent_batching``,
            ``feature_memory_gib``, ``progress``).
        likelihood: ``"classification"`` or ``"regression"``.
        solver: For the samples: ``"auto"`` (default; see :func:`~linearised_laplace.solvers.auto.
            choose_solver`: Cholesky where a dense solve is cheap, else preconditioned CG or SGD),
            :class:`~linearised_laplace.solvers.SGD` (primal only),
            :class:`~linearised_laplace.solvers.SDD` (stochastic dual descent; dual only),
            :class:`~linearised_laplace.solvers.CG` or :class:`~linearised_laplace.solvers.Cholesky`.
            ``solve_info`` says which ran and why.
        mean_solver: For the linear model's mean in EM: :class:`~linearised_laplace.solvers.newton.Newton`
            (default; full-batch Newton-CG, one data pass per CG iteration at one vector, precise)
            or :class:`~linearised_laplace.solvers.SGD` (minibatch, as the seed paper).
        space: ``"primal"`` (weight space, ``K × D`` unknowns), ``"dual"`` (observation space,
            ``K × n·C`` unknowns, pathwise conditioning; see :mod:`linearised_laplace.solvers.dual`) or
            ``"auto"`` (default: dual when ``n·C < D``, unless the solver is SGD; always dual for
            SDD). Both give the same samples for the same seed, up to the solver's tolerance.
        strict: Raise :class:`~linearised_laplace.ConvergenceError` when a solve ends above its
            residual tolerance, instead of a :class:`~linearised_laplace.ConvergenceWarning`.
        **kwargs: The shared keywords.

    Attributes:
        solve_info: Diagnostics of the last solve: the solver and space that ran and why, steps,
            each sample's relative residual against the tolerance, time.

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

    @property
    def solver(self) -> Solver | None:
        """The samples' solver configuration (``None``: automatic)."""
        return self.posterior.solver

    @property
    def solve_info(self) -> SolveInfo | None:
        """Diagnostics of the last solve."""
        return self.posterior.solve_info

    @classmethod
    def settings_from(cls, meta: dict, path: str | Path) -> dict:  # noqa: D102
        return SampledPosterior.settings_from(meta, path)
