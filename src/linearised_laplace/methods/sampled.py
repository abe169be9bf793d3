r"""Sampled linearised Laplace (Antorán et al., ICLR 2023): posterior samples by sample-then-optimise.

Memory is ``O(S·D)`` and each SGD step costs one JVP and one VJP per sample on a minibatch; neither
the Jacobian nor any ``D×D`` matrix is ever formed.
"""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import DataLoader

from ..noise import NoiseSource, draw_posterior_noise
from ..solvers import SGD, SolveInfo, Solver
from .base import BaseLaplace


class SampledLaplace(BaseLaplace):
    r"""Linearised Laplace with posterior samples drawn by sample-then-optimise.

    ``fit`` draws ``S`` zero-mean samples ``ζ_s ~ N(0, H^{-1})``, ``H = JᵀBJ + A``, each the minimiser
    of a randomised quadratic solved by minibatch SGD using only JVPs and VJPs.

    Args:
        model: Trained network (see :class:`~linearised_laplace.methods.base.BaseLaplace` for the
            shared keywords ``likelihood``, ``prior_precision``, ``sigma_noise``, ``n_samples``,
            ``seed``, ``parameters``, ``exclude_norm``, ``tangent_batching``, ``progress``).
        solver: :class:`~linearised_laplace.solvers.SGD` (default, with defaults that need no
            tuning), :class:`~linearised_laplace.solvers.CG` or
            :class:`~linearised_laplace.solvers.Cholesky`.
        **kwargs: The shared keywords.

    Attributes:
        solve_info: Diagnostics of the last solve (steps, relative residuals, time).

    Example:
        >>> import torch, linearised_laplace as lla
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> la = lla.SampledLaplace(net, "classification", n_samples=8, solver=lla.SGD(n_epochs=5))
        >>> la.fit((x, y)).predictive_samples(x[:5]).shape
        torch.Size([8, 5, 3])
    """

    def __init__(
        self, model, likelihood="classification", *, solver: Solver | None = None, **kwargs
    ):
        super().__init__(model, likelihood, **kwargs)
        self.solver = SGD() if solver is None else solver
        self.solve_info: SolveInfo | None = None

    def fit(self, train_loader: DataLoader | tuple[Tensor, Tensor]) -> SampledLaplace:
        """Draw ``n_samples`` posterior samples at the current hyperparameters; returns ``self``.

        Args:
            train_loader: Training data yielding ``(x, y)``: a DataLoader over a map-style dataset,
                or a pair of tensors. Classification ``y`` are integer labels ``[N]``; regression
                ``y`` is ``[N, C]`` (or ``[N]`` when ``C = 1``).
        """
        model = self._linear_model(train_loader)
        noise = draw_posterior_noise(model, self.n_samples, NoiseSource(self.seed), self.progress)
        result = self.solver.solve(model, noise, seed=self.seed, progress=self.progress)
        self._samples, self.solve_info = result.samples, result.info
        return self

    def functional_variance(self, x: Tensor) -> Tensor:
        r"""Sample estimate ``(1/S) Σ_s (J(x) ζ_s)(J(x) ζ_s)ᵀ`` (the mean is known to be 0): ``[N, C, C]``."""
        self._check_fitted()
        _, jz = self.linearisation.jvp(x, self._samples)
        return (jz[..., :, None] * jz[..., None, :]).mean(0)
