r"""The dense posterior ``N(0, H^{-1})``, ``H = M + A``, held as the Cholesky factor of ``H``.

Costs ``O(n C P²)`` to assemble, ``O(P³)`` to factorise and ``O(P²)`` memory in ``P`` coordinates.
EM is exact MacKay EM; the evidence and a validation grid search refactorise ``H`` per value.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_sample_budget
from ..em import EMState, EStep, Expectation, dense_gamma
from ..likelihoods import Gaussian, Likelihood
from ..linear_model import LinearGaussianModel
from ..mean import MeanMode, MeanProblem, log_likelihood, posterior_mean, solve_mean
from ..metrics import linearised_nll
from ..noise import NoiseSource, draw_posterior_noise
from ..seeds import derive_seed
from ..solvers.cholesky import cholesky, cholesky_solve
from ..solvers.newton import Newton


def check_dense(dim: int, what: str) -> None:
    """Raise before any work if two dense ``dim × dim`` matrices exceed the memory budget."""
    check_sample_budget(
        2 * dim * dim,
        f"{what} over {dim} parameters (two dense {dim}×{dim} matrices)",
        "Use SampledLaplace, or linearise fewer parameters (e.g. parameters='last_layer').",
    )


class DensePosterior:
    """``H^{-1}`` by Cholesky, exact samples ``R^{-T} ξ``-style from the shared noise, exact EM.

    Args:
        mean_solver: For the linear model's mean (default ``Newton(rtol=1e-10)``).

    Attributes:
        model: The linear model of the last fit (``None`` after a load).
        ggn: Its dense GGN ``M`` ``[P, P]`` (float64); ``factor``: ``R``, ``H = R Rᵀ``.
        samples: ``[S, P]`` samples in the posterior's coordinates.
    """

    def __init__(self, mean_solver: Newton | None = None):
        self.mean_solver = Newton(rtol=1e-10) if mean_solver is None else mean_solver
        self.forget()

    def forget(self) -> None:
        """Drop the fit."""
        self.model = self.ggn = self.factor = self.samples = None

    def fit(
        self, model, n_samples: int, seed: int, progress: bool | None, ggn: Tensor | None = None
    ) -> None:
        """Factorise ``H`` (``ggn``: ``M`` if already built) and draw ``n_samples`` samples."""
        ggn = model.dense_ggn() if ggn is None else ggn
        noise = draw_posterior_noise(model, n_samples, NoiseSource(seed), progress)
        prior = model.prior.diag(torch.float64, ggn.device)
        self.model, self.ggn = model, ggn
        self.factor = cholesky(ggn + torch.diag(prior))
        self.samples = cholesky_solve(self.factor, noise.rhs(prior)).to(model.features.dtype)

    def extra_samples(self, count: int, seed: int) -> Tensor:
        """``count`` more exact samples ``R^{-T} ξ`` (float64), from their own stream."""
        xi = NoiseSource(seed, stream="predictive").prior(
            count, len(self.factor), dtype=torch.float64, device=self.factor.device
        )
        return torch.linalg.solve_triangular(self.factor.T, xi.T, upper=True).T

    @property
    def covariance(self) -> Tensor:
        """``H^{-1}`` ``[P, P]`` (float64)."""
        return torch.cholesky_inverse(self.factor)

    def _half(self, jac: Tensor, factor: Tensor) -> Tensor:
        """``J R^{-T}`` for ``J`` ``[N, C, P]``, so that ``J H^{-1} Jᵀ = half halfᵀ``."""
        n, c, p = jac.shape
        half = torch.linalg.solve_triangular(factor, jac.reshape(n * c, p).T, upper=False)
        return half.T.reshape(n, c, p)

    def functional_variance(self, features, x: Tensor) -> Tensor:
        """``J(x) H^{-1} J(x)ᵀ`` ``[N, C, C]`` for features ``J`` in the posterior's coordinates."""
        half = self._half(features.to_dense(x).to(torch.float64), self.factor)
        return (half @ half.transpose(1, 2)).to(features.dtype)

    def solve_mean(
        self, problem: MeanProblem, init: Tensor, preconditioner: Tensor, seed: int, progress
    ) -> Tensor:
        """``θ̄`` ``[P]`` by the mean solver."""
        return solve_mean(problem, self.mean_solver, init, preconditioner, seed, progress).samples[
            0
        ]

    def _at(self, model, ggn: Tensor, precision: Tensor, sigma: float):
        current, ratio = model.at(precision, sigma)
        return current, ggn * ratio**2, ratio

    def expectation(
        self, model: LinearGaussianModel, mode: MeanMode, anchor: Tensor, seed: int, progress
    ) -> Expectation:
        """Exact MacKay EM: ``γ`` from ``H^{-1}``, or from one eigendecomposition of ``M``."""
        ggn = model.dense_ggn()
        eigenvalues = torch.linalg.eigvalsh(ggn).clamp_min(0) if model.prior.is_isotropic else None
        n_groups = model.prior.precision.numel()

        def step(state: EMState) -> EStep:
            current, scaled, ratio = self._at(model, ggn, state.precision, state.sigma)
            prior = current.prior.diag(torch.float64, ggn.device)
            mu = None if eigenvalues is None else eigenvalues * ratio**2
            gamma = dense_gamma(scaled, prior, model.prior.groups, n_groups, mu)
            preconditioner = (scaled.diagonal() + prior).to(model.features.dtype)
            step_seed = derive_seed(seed, "em", state.step)
            mean, residual = posterior_mean(
                current,
                mode,
                anchor,
                lambda p: self.solve_mean(p, state.mean, preconditioner, step_seed, progress),
            )
            return EStep(mean, gamma, None, residual)

        def refit(state: EMState, n_samples: int) -> None:
            current, scaled, _ = self._at(model, ggn, state.precision, state.sigma)
            self.fit(current, n_samples, seed, progress, scaled)

        return Expectation(step, refit, estimated=False)

    def validation_nll(
        self, jac: Tensor, f0: Tensor, y: Tensor, likelihood: Likelihood, grid: Tensor
    ) -> list[float]:
        """The validation NLL at each isotropic precision of ``grid`` (features ``jac`` ``[N, C, P]``)."""
        sigma = likelihood.sigma if isinstance(likelihood, Gaussian) else None
        eye = torch.eye(jac.shape[-1], dtype=torch.float64, device=jac.device)
        return [
            linearised_nll(f0, self._half(jac, cholesky(self.ggn + alpha * eye)), y, sigma)
            for alpha in grid
        ]

    def log_evidence(
        self, precision: Tensor, sigma: float, mode: MeanMode, anchor: Tensor, seed: int, progress
    ) -> Tensor:
        r"""``Σ_i log p(y_i | g_i(θ̄)) − ½ θ̄ᵀAθ̄ − ½ log|H| + ½ log|A|`` at these hyperparameters."""
        current, ggn, _ = self._at(self.model, self.ggn, precision, sigma)
        prior = current.prior.diag(torch.float64, ggn.device)
        factor = cholesky(ggn + torch.diag(prior))
        init = anchor.clone() if mode is MeanMode.AFFINE else torch.zeros_like(anchor)
        preconditioner = (ggn.diagonal() + prior).to(current.features.dtype)
        theta, _ = posterior_mean(
            current,
            mode,
            anchor,
            lambda p: self.solve_mean(p, init, preconditioner, seed, progress),
        )
        fit = log_likelihood(current, mode, anchor, theta)
        theta = theta.double()
        return torch.tensor(
            fit
            - 0.5 * float((prior * theta * theta).sum())
            - float(factor.diagonal().log().sum())
            + 0.5 * float(prior.log().sum()),
            dtype=torch.float64,
        )

    def check_parallel(self) -> None:
        """A dense posterior shards over ranks like any data pass."""

    def settings(self) -> dict:
        """Saved settings: none (the mean solver is not saved)."""
        return {}

    def tensors(self) -> dict[str, Tensor]:
        """The fitted tensors to save besides the samples."""
        return {"factor": self.factor}

    def restore(self, tensors: dict[str, Tensor], device) -> None:
        """Restore a saved fit (without its training data)."""
        self.factor, self.samples = tensors["factor"], tensors["samples"].to(device)
