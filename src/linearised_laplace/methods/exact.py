r"""Exact linearised Laplace: the dense posterior ``N(0, H^{-1})`` of the tangent linear model.

The oracle against which every approximation is checked. Costs ``O(n C D²)`` to assemble ``H``,
``O(D³)`` to factorise it and ``O(D²)`` memory, so it is for ``D`` up to about ``2·10⁴``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..posteriors.dense import DensePosterior, check_dense
from ..solvers.mean import mean_mode
from ..solvers.newton import Newton
from ..solvers.sgd import SGD
from .base import Laplace


class ExactLaplace(Laplace):
    r"""Linearised Laplace with the dense posterior covariance ``Σ = H^{-1}``, ``H = JᵀBJ + A``.

    Takes the same keywords as :class:`~linearised_laplace.SampledLaplace`. Its posterior samples
    are drawn from the same noise as ``SampledLaplace`` with the same seed, and solved exactly, so
    the two can be compared sample by sample. ``optimize_prior_precision`` runs exact MacKay EM
    (for an isotropic prior from one eigendecomposition of the GGN).

    ``mean_solver``: for the linear model's mean, a :class:`~linearised_laplace.solvers.newton.Newton`
    (default) or :class:`~linearised_laplace.solvers.SGD` (for a network whose data passes are slow);
    ``ggn_cache``: a file that keeps the dense GGN and its eigenvalues between runs (see
    :class:`~linearised_laplace.posteriors.dense.DensePosterior`); the other keywords are those of
    :class:`~linearised_laplace.methods.base.Laplace`.
    """

    def __init__(
        self,
        model,
        likelihood="classification",
        *,
        mean_solver: Newton | SGD | None = None,
        ggn_cache: str | Path | None = None,
        **kwargs,
    ):
        posterior = DensePosterior(mean_solver, ggn_cache)
        super().__init__(model, likelihood, posterior=posterior, **kwargs)
        check_dense(self.coordinates.dim, type(self).__name__)

    @property
    def feature_covariance(self) -> Tensor:
        """``H^{-1}`` in the posterior's coordinates (g-prior scaled, or the Nyström basis): float64."""
        self.check_fitted()
        return self.posterior.covariance

    @property
    def posterior_precision(self) -> Tensor:
        """``H = JᵀBJ + A`` in the original coordinates: float64 ``[D, D]`` (not in a basis)."""
        self.check_fitted()
        factor = self.posterior.factor
        return self.coordinates.precision_to_parameters(factor @ factor.T)

    @property
    def H(self) -> Tensor:
        """laplace-torch's ``H``: the training loss' GGN ``Jᵀ Λ J`` at unit noise, without the prior.

        Float64 ``[D, D]``, so that ``posterior_precision = H / σ² + diag(prior_precision_diag)``
        (for classification ``σ = 1``). Not defined outside a Nyström basis.
        """
        prior = torch.diag(self.prior_precision_diag).to(self.posterior.factor.device)
        return (self.posterior_precision - prior) * self.sigma_noise.item() ** 2

    @property
    def posterior_covariance(self) -> Tensor:
        """``Σ = H^{-1}`` in the original coordinates: float64 ``[D, D]`` (rank ``K`` in a basis)."""
        return self.coordinates.covariance_to_parameters(self.feature_covariance)

    def log_marginal_likelihood(
        self,
        prior_precision: float | list[float] | Tensor | None = None,
        sigma_noise: float | None = None,
        *,
        mean: str = "auto",
    ) -> Tensor:
        r"""Laplace evidence of the linear model: exact for a Gaussian likelihood.

        ``log p(y) ≈ Σ_i log p(y_i | g_i(θ̄)) − ½ θ̄ᵀAθ̄ − ½ log|H| + ½ log|A|``, with ``θ̄`` the
        linear model's mode (re-solved at the given hyperparameters; ``mean`` as in
        :meth:`optimize_prior_precision`). Defaults to the current hyperparameters.
        """
        fit = self._fitted_data("log_marginal_likelihood")
        mode = mean_mode(mean, self.likelihood, self.g_prior)
        prior = (
            self.prior if prior_precision is None else self.prior.with_precision(prior_precision)
        )
        sigma = float(self.sigma_noise) if sigma_noise is None else float(sigma_noise)
        anchor = self.coordinates.anchor()
        return fit.log_evidence(prior.precision, sigma, mode, anchor, self.seed, self.progress)
