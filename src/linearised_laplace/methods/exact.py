r"""Exact linearised Laplace: the dense posterior ``N(0, H^{-1})`` of the tangent linear model.

The oracle against which every approximation is checked. Costs ``O(n C D²)`` to assemble ``H``,
``O(D³)`` to factorise it and ``O(D²)`` memory, so it is for ``D`` up to about ``2·10⁴``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from .. import metrics
from .._checks import check_finite, check_positive, check_sample_budget
from ..data import Data
from ..em import EMState, EStep, exact_gamma
from ..exceptions import NotFittedError
from ..likelihoods import Gaussian
from ..linear_model import LinearGaussianModel
from ..mean import MeanMode, mean_mode
from ..noise import NoiseSource, draw_posterior_noise
from ..seeds import derive_seed
from ..solvers.cholesky import cholesky, cholesky_solve
from ..solvers.newton import Newton
from .base import BaseLaplace, TrainingData


class ExactLaplace(BaseLaplace):
    r"""Linearised Laplace with the dense posterior covariance ``Σ = H^{-1}``, ``H = JᵀBJ + A``.

    Takes the same keywords as :class:`~linearised_laplace.SampledLaplace`. Its posterior samples
    are drawn from the same noise as ``SampledLaplace`` with the same seed, and solved exactly, so
    the two can be compared sample by sample. ``optimize_prior_precision`` runs exact MacKay EM.

    Args:
        model: Trained network.
        likelihood: ``"classification"`` or ``"regression"``.
        mean_solver: For the linear model's mean: :class:`~linearised_laplace.solvers.newton.Newton`.
        **kwargs: The shared keywords of :class:`~linearised_laplace.methods.base.BaseLaplace`.
    """

    _estimates_gamma = False

    def __init__(
        self, model, likelihood="classification", *, mean_solver: Newton | None = None, **kwargs
    ):
        super().__init__(model, likelihood, **kwargs)
        self._init_exact(self.n_params, mean_solver)

    def _init_exact(self, dim: int, mean_solver: Newton | None) -> None:
        check_sample_budget(
            2 * dim * dim,
            f"{type(self).__name__} over {dim} parameters (two dense {dim}×{dim} matrices)",
            "Use SampledLaplace, or linearise fewer parameters (e.g. parameters='last_layer').",
        )
        self.mean_solver = Newton(rtol=1e-10) if mean_solver is None else mean_solver
        self._ggn: Tensor | None = None  # GGN in the feature coordinates, at the current σ
        self._factor: Tensor | None = None  # Cholesky factor of H in the feature coordinates
        self._model: LinearGaussianModel | None = None

    def fit(self, train_loader: TrainingData) -> ExactLaplace:
        """Assemble and factorise ``H`` and draw ``n_samples`` exact samples; returns ``self``."""
        model = self._fit_model(train_loader)
        self._factorise(model, model.dense_ggn())
        return self

    def _forget_fit(self) -> None:
        super()._forget_fit()
        self._model = self._ggn = self._factor = None

    def _factorise(self, model: LinearGaussianModel, ggn: Tensor) -> None:
        noise = draw_posterior_noise(model, self.n_samples, NoiseSource(self.seed), self.progress)
        prior = self.prior.diag(torch.float64, ggn.device)
        self._model, self._ggn = model, ggn
        self._factor = cholesky(ggn + torch.diag(prior))
        self._samples = cholesky_solve(self._factor, noise.rhs(prior)).to(self.linearisation.dtype)

    @property
    def feature_covariance(self) -> Tensor:
        """``H^{-1}`` in the feature coordinates (g-prior scaled, or the Nyström basis): float64."""
        self._check_fitted()
        return torch.cholesky_inverse(self._factor)

    def _scale64(self) -> Tensor:
        if self.scale is None:
            return torch.ones(
                self._factor.shape[0], dtype=torch.float64, device=self._factor.device
            )
        return self.scale.double()

    @property
    def posterior_precision(self) -> Tensor:
        """``H = JᵀBJ + A`` in the original coordinates: float64 ``[D, D]``."""
        self._check_fitted()
        inv = 1 / self._scale64()
        return inv[:, None] * (self._factor @ self._factor.T) * inv[None, :]

    @property
    def posterior_covariance(self) -> Tensor:
        """``Σ = H^{-1}`` in the original coordinates: float64 ``[D, D]``."""
        self._check_fitted()
        s = self._scale64()
        return s[:, None] * self.feature_covariance * s[None, :]

    def functional_variance(self, x: Tensor) -> Tensor:
        r"""Exact ``J(x) H^{-1} J(x)ᵀ`` per input: ``[N, C, C]``."""
        self._check_fitted()
        x = self.linearisation.check_inputs(x)
        jac = self._features().to_dense(x).to(torch.float64)  # [N, C, D]
        n, c, d = jac.shape
        half = torch.linalg.solve_triangular(self._factor, jac.reshape(n * c, d).T, upper=False)
        half = half.T.reshape(n, c, d)
        return (half @ half.transpose(1, 2)).to(self.linearisation.dtype)

    def _samples_for(self, n_samples: int | None) -> Tensor:
        """Exact samples; beyond the stored ones, more are drawn as ``R^{-T} ξ`` (``H = R Rᵀ``)."""
        stored = self.posterior_samples
        if n_samples is None or n_samples <= stored.shape[0]:
            return super()._samples_for(n_samples)
        extra = NoiseSource(self.seed, stream="predictive").prior(
            n_samples - stored.shape[0],
            self._factor.shape[0],
            dtype=torch.float64,
            device=self._factor.device,
        )
        more = torch.linalg.solve_triangular(self._factor.T, extra.T, upper=True).T
        return torch.cat([stored, self._to_parameters(more.to(stored.dtype))])

    def optimize_prior_precision(
        self,
        train_loader: TrainingData,
        max_iter: int = 10,
        tol: float = 1e-2,
        *,
        mean: str = "tangent",
        update_sigma: bool = False,
        checkpoint: str | Path | None = None,
    ) -> list[dict]:
        r"""Exact MacKay EM: ``α_g = γ_g / ‖θ̄_g‖²`` with ``γ_g = d_g − α_g tr_g(H^{-1})``.

        Takes the arguments of :meth:`SampledLaplace.optimize_prior_precision` (without the
        sample settings) and refits the exact posterior at the result. For an isotropic prior,
        ``γ = Σ_j μ_j / (μ_j + α)`` from one eigendecomposition of the GGN.

        Returns:
            The history, one dict per step (step 0 is the start).
        """
        mode = self._check_em(max_iter, tol, mean, update_sigma, checkpoint)
        model = self._fit_model(train_loader)
        ggn = model.dense_ggn()
        sigma_ref = float(self.sigma_noise)
        eigenvalues = torch.linalg.eigvalsh(ggn) if self.prior.is_isotropic else None
        n_groups = self.prior.precision.numel()

        def e_step(state: EMState) -> EStep:
            current, scaled_ggn = self._at(model, ggn, state.precision, state.sigma, sigma_ref)
            prior = current.prior.diag(torch.float64, ggn.device)
            if eigenvalues is not None:
                mu = eigenvalues.clamp_min(0) * (sigma_ref / state.sigma) ** 2
                gamma = (mu / (mu + state.precision)).sum().reshape(1)
            else:
                cov_diag = torch.cholesky_inverse(
                    cholesky(scaled_ggn + torch.diag(prior))
                ).diagonal()
                gamma = exact_gamma(cov_diag, prior, self.prior.groups, n_groups)
            preconditioner = (scaled_ggn.diagonal() + prior).to(self.linearisation.dtype)
            seed = derive_seed(self.seed, "em", state.step)
            mean_w, residual = self._mean_step(
                current, mode, self.mean_solver, state.mean, preconditioner, seed
            )
            return EStep(mean_w, gamma, None, residual)

        self._em(model, e_step, mode, max_iter, tol, update_sigma, checkpoint, {})
        current, scaled_ggn = self._at(
            model, ggn, self.prior.precision, float(self.sigma_noise), sigma_ref
        )
        self._factorise(current, scaled_ggn)
        return self.em_history

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
        self._check_fitted()
        if self._model is None:
            raise NotFittedError(
                "select_prior_precision needs the training fit: call `.fit(train_loader)`."
            )
        self._check_weights_unchanged("select_prior_precision")
        if grid is None:
            grid = torch.logspace(-4, 4, 21, dtype=torch.float64)
        grid = check_positive("grid", grid)
        val = Data(val_loader)
        x, y = val.subset(torch.arange(len(val)))
        x = self.linearisation.check_inputs(x, "the val_loader's inputs")
        check_finite("The val_loader targets", y)
        features = self._features()
        f0 = features.forward(x).to(torch.float64)
        try:
            self.likelihood.check_targets(f0, y.to(f0.device))
        except (TypeError, ValueError) as err:
            raise type(err)(f"The val_loader targets do not fit the model: {err}") from err
        jac = features.to_dense(x).to(torch.float64)  # [N, C, P]
        n, c, p = jac.shape
        eye = torch.eye(p, dtype=torch.float64, device=jac.device)
        scores = []
        for alpha in grid:
            factor = cholesky(self._ggn + alpha * eye)
            half = torch.linalg.solve_triangular(factor, jac.reshape(n * c, p).T, upper=False)
            half = half.T.reshape(n, c, p)
            if isinstance(self.likelihood, Gaussian):
                cov = half @ half.transpose(1, 2)
                nll = -metrics.gaussian_log_likelihood(f0, cov, y, float(self.sigma_noise)).mean()
            else:
                variance = half.square().sum(-1)
                log_probs = torch.log_softmax(f0 / (1 + math.pi * variance / 8).sqrt(), -1)
                nll = -log_probs[torch.arange(n), y.long()].mean()
            scores.append(float(nll))
        best = float(grid[int(torch.tensor(scores).argmin())])
        self.prior = self.prior.with_precision(best)
        self._factorise(self._model, self._ggn)
        return {"grid": grid.tolist(), "nll": scores, "prior_precision": best}

    def _at(
        self,
        model: LinearGaussianModel,
        ggn: Tensor,
        precision: Tensor,
        sigma: float,
        sigma_ref: float,
    ) -> tuple[LinearGaussianModel, Tensor]:
        """The model and its GGN at prior precision ``precision`` and noise ``sigma``."""
        current = replace(model, prior=self.prior.with_precision(precision))
        if not isinstance(model.likelihood, Gaussian) or sigma == sigma_ref:
            return current, ggn
        return replace(current, likelihood=Gaussian(sigma)), ggn * (sigma_ref / sigma) ** 2

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
        self._check_fitted()
        if self._model is None:
            raise NotFittedError(
                "log_marginal_likelihood needs the training data: call `.fit(train_loader)` "
                "(a loaded posterior does not keep its data)."
            )
        self._check_weights_unchanged("log_marginal_likelihood")
        mode = mean_mode(mean)
        precision = (
            self.prior if prior_precision is None else self.prior.with_precision(prior_precision)
        ).precision
        fitted_sigma = float(self.sigma_noise)
        sigma = fitted_sigma if sigma_noise is None else float(sigma_noise)
        current, ggn = self._at(self._model, self._ggn, precision, sigma, fitted_sigma)
        prior = current.prior.diag(torch.float64, ggn.device)
        factor = cholesky(ggn + torch.diag(prior))
        init = (
            self._anchor().clone() if mode is MeanMode.AFFINE else torch.zeros_like(self._anchor())
        )
        preconditioner = (ggn.diagonal() + prior).to(self.linearisation.dtype)
        theta, _ = self._mean_step(current, mode, self.mean_solver, init, preconditioner, self.seed)
        if mode is MeanMode.NETWORK:
            outputs = current.features.forward
        else:
            problem = self._mean_problem(current, mode)
            outputs = lambda x: problem.outputs(x, theta[None])[0]  # noqa: E731
        fit = torch.zeros((), dtype=torch.float64, device=theta.device)
        for _, x, y in current.data.batches():
            fit += current.likelihood.log_prob(outputs(x), y).sum().double()
        fit = float(current.data.all_reduce(fit))
        theta = theta.double()
        return torch.tensor(
            fit
            - 0.5 * float((prior * theta * theta).sum())
            - float(factor.diagonal().log().sum())
            + 0.5 * float(prior.log().sum()),
            dtype=torch.float64,
        )

    def _state_tensors(self) -> dict[str, Tensor]:
        return {"factor": self._factor}

    def _restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self._factor = tensors["factor"]
