r"""Exact linearised Laplace: the dense posterior ``N(0, H^{-1})`` of the tangent linear model.

The oracle against which every approximation is checked. Costs ``O(n C D²)`` to assemble ``H``,
``O(D³)`` to factorise it and ``O(D²)`` memory, so it is for ``D`` up to about ``2·10⁴``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._checks import check_sample_budget
from ..noise import NoiseSource, draw_posterior_noise
from ..solvers.exact import cholesky, cholesky_solve, posterior_precision
from .base import BaseLaplace


class ExactLaplace(BaseLaplace):
    r"""Linearised Laplace with the dense posterior covariance ``Σ = H^{-1}``, ``H = JᵀBJ + A``.

    Takes the same keywords as :class:`~linearised_laplace.SampledLaplace`. Its posterior samples
    are drawn from the same noise as ``SampledLaplace`` with the same seed, and solved exactly, so
    the two can be compared sample by sample.

    Attributes:
        posterior_precision: ``[D, D]`` float64 ``H`` after ``fit``.
    """

    def __init__(self, model, likelihood="classification", **kwargs):
        super().__init__(model, likelihood, **kwargs)
        d = self.n_params
        check_sample_budget(
            2 * d * d,
            f"ExactLaplace over D = {d} parameters (two dense {d}×{d} matrices)",
            "Use SampledLaplace, or linearise fewer parameters (e.g. parameters='last_layer').",
        )
        self.posterior_precision: Tensor | None = None
        self._factor: Tensor | None = None

    def fit(self, train_loader: DataLoader | tuple[Tensor, Tensor]) -> ExactLaplace:
        """Assemble and factorise ``H`` and draw ``n_samples`` exact samples; returns ``self``."""
        model = self._linear_model(train_loader)
        noise = draw_posterior_noise(model, self.n_samples, NoiseSource(self.seed), self.progress)
        self.posterior_precision = posterior_precision(model)
        self._factor = cholesky(self.posterior_precision)
        rhs = noise.rhs(self.prior.diag(torch.float64, self._factor.device))
        self._samples = cholesky_solve(self._factor, rhs).to(self.linearisation.dtype)
        return self

    @property
    def posterior_covariance(self) -> Tensor:
        """``Σ = H^{-1}``: float64 ``[D, D]``."""
        self._check_fitted()
        return torch.cholesky_inverse(self._factor)

    def functional_variance(self, x: Tensor) -> Tensor:
        r"""Exact ``J(x) H^{-1} J(x)ᵀ`` per input: ``[N, C, C]``."""
        self._check_fitted()
        jac = self.linearisation.to_dense(x).to(torch.float64)  # [N, C, D]
        n, c, d = jac.shape
        half = torch.linalg.solve_triangular(self._factor, jac.reshape(n * c, d).T, upper=False)
        half = half.T.reshape(n, c, d)
        return (half @ half.transpose(1, 2)).to(self.linearisation.dtype)
