r"""Exact linearised Laplace: the dense posterior ``N(0, H^{-1})`` of the tangent linear model.

The oracle against which every approximation is checked. Costs ``O(n C D²)`` to assemble ``H``,
``O(D³)`` to factorise it and ``O(D²)`` memory, so it is for ``D`` up to about ``2·10⁴``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, check_positive
from ..data import Data
from ..exceptions import NotFittedError
from ..likelihoods import Gaussian
from ..mean import mean_mode
from ..posteriors.dense import DensePosterior, check_dense
from ..solvers.newton import Newton
from .base import Laplace, TrainingData


class ExactLaplace(Laplace):
    r"""Linearised Laplace with the dense posterior covariance ``Σ = H^{-1}``, ``H = JᵀBJ + A``.

    Takes the same keywords as :class:`~linearised_laplace.SampledLaplace`. Its posterior samples
    are drawn from the same noise as ``SampledLaplace`` with the same seed, and solved exactly, so
    the two can be compared sample by sample. ``optimize_prior_precision`` runs exact MacKay EM
    (for an isotropic prior from one eigendecomposition of the GGN).

    ``mean_solver``: for the linear model's mean, a :class:`~linearised_laplace.solvers.newton.Newton`;
    the other keywords are those of :class:`~linearised_laplace.methods.base.Laplace`.
    """

    def __init__(
        self, model, likelihood="classification", *, mean_solver: Newton | None = None, **kwargs
    ):
        super().__init__(model, likelihood, posterior=DensePosterior(mean_solver), **kwargs)
        check_dense(self.coordinates.dim, type(self).__name__)

    def _fitted_data(self, what: str) -> DensePosterior:
        self.check_fitted()
        if self.posterior.model is None:
            raise NotFittedError(
                f"`{what}` needs the training data: call `.fit(train_loader)` (a loaded posterior "
                "does not keep its data)."
            )
        changed = self.linearisation.changed()
        if changed is not None:
            raise ValueError(
                f"`{what}` uses the fit at the model's former weights, but the model's {changed} "
                "changed since. Call `.fit(train_loader)` again to linearise at the new weights."
            )
        return self.posterior

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
    def posterior_covariance(self) -> Tensor:
        """``Σ = H^{-1}`` in the original coordinates: float64 ``[D, D]`` (rank ``K`` in a basis)."""
        return self.coordinates.covariance_to_parameters(self.feature_covariance)

    def select_prior_precision(self, val_loader: TrainingData, grid: Tensor | None = None) -> dict:
        r"""Choose ``α`` on a grid by the validation negative log-likelihood, then refit at it.

        The alternative to EM that the ELLA paper and laplace-torch's ``gridsearch`` use. Each grid
        point refactorises the ``P × P`` posterior (``P`` = the feature dimension), so it is cheap
        for subnetworks and Nyström bases. Classification is scored with the probit predictive,
        regression with the Gaussian predictive including the noise. Call :meth:`fit` first.

        Args:
            val_loader: Validation data, as for :meth:`fit`.
            grid: Candidate precisions (default ``10^{-4} … 10^{4}``, 21 points).

        Returns:
            ``{"grid": [...], "nll": [...], "prior_precision": best}``.
        """
        fit = self._fitted_data("select_prior_precision")
        grid = check_positive(
            "grid", torch.logspace(-4, 4, 21, dtype=torch.float64) if grid is None else grid
        )
        val = Data(val_loader)
        x, y = val.subset(torch.arange(len(val)))
        x = self.linearisation.check_inputs(x, "the val_loader's inputs")
        check_finite("The val_loader targets", y)
        features = self.coordinates.transform(self.linearisation)
        f0 = features.forward(x).to(torch.float64)
        try:
            self.likelihood.check_targets(f0, y.to(f0.device))
        except (TypeError, ValueError) as err:
            raise type(err)(f"The val_loader targets do not fit the model: {err}") from err
        sigma = self.likelihood.sigma if isinstance(self.likelihood, Gaussian) else None
        scores = fit.validation_nll(features.to_dense(x).double(), f0, y, sigma, grid)
        best = float(grid[int(torch.tensor(scores).argmin())])
        self.prior = self.prior.with_precision(best)
        fit.fit(fit.model.with_prior(self.prior), self.n_samples, self.seed, self.progress, fit.ggn)
        return {"grid": grid.tolist(), "nll": scores, "prior_precision": best}

    def log_marginal_likelihood(
        self,
        prior_precision: float | list[float] | Tensor | None = None,
        sigma_noise: float | None = None,
        *,
        mean: str = "tangent",
    ) -> Tensor:
        r"""Laplace evidence of the linear model: exact for a Gaussian likelihood.

        ``log p(y) ≈ Σ_i log p(y_i | g_i(θ̄)) − ½ θ̄ᵀAθ̄ − ½ log|H| + ½ log|A|``, with ``θ̄`` the
        linear model's mode (re-solved at the given hyperparameters; ``mean`` as in
        :meth:`optimize_prior_precision`). Defaults to the current hyperparameters.
        """
        fit = self._fitted_data("log_marginal_likelihood")
        mode = mean_mode(mean)
        prior = (
            self.prior if prior_precision is None else self.prior.with_precision(prior_precision)
        )
        sigma = float(self.sigma_noise) if sigma_noise is None else float(sigma_noise)
        anchor = self.coordinates.anchor()
        return fit.log_evidence(prior.precision, sigma, mode, anchor, self.seed, self.progress)
