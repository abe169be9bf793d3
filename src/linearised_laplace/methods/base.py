r"""What every linearised-Laplace method shares: configuration, the predictive, and fitted state.

A method linearises ``model`` at its current parameters ``θ*`` and infers the posterior of the tangent
linear model ``f(x; θ*) + J(x) ζ``. Predictions are centred on the network's own outputs; the
posterior enters through zero-mean samples ``ζ_s`` or, for exact methods, the covariance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .._checks import check_positive_int
from ..data import Data
from ..exceptions import NotFittedError
from ..likelihoods import Categorical, Likelihood, make_likelihood
from ..linear_model import LinearGaussianModel
from ..linearisation import Linearisation, TangentBatching
from ..parameters import ParameterSpec
from ..priors import make_prior

LikelihoodSpec = Literal["classification", "regression"] | Likelihood


class BaseLaplace(ABC):
    """Shared constructor and predictive of the linearised-Laplace methods.

    Args:
        model: Trained network mapping ``x`` ``[N, ...]`` to outputs ``[N, C]``. It is never modified.
        likelihood: ``"classification"`` (softmax over ``C`` logits), ``"regression"`` (Gaussian),
            or a :class:`~linearised_laplace.likelihoods.Likelihood`.
        prior_precision: ``α > 0``, or one value per linearised parameter tensor (layerwise).
        sigma_noise: Gaussian noise standard deviation (regression only).
        n_samples: Posterior samples ``S`` drawn by ``fit``.
        seed: Seeds every random draw; equal seeds give equal samples.
        parameters: Which parameters to linearise: ``"all"``, ``"last_layer"``, names or patterns,
            or flat indices (see :func:`~linearised_laplace.parameters.select_parameters`).
        exclude_norm: Leave normalisation-layer affine parameters out.
        tangent_batching: ``"loop"`` or ``"vmap"`` over samples in JVPs and VJPs.
        progress: Progress bars on long passes (``None``: only on a terminal).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: LikelihoodSpec = "classification",
        *,
        prior_precision: float | list[float] | Tensor = 1.0,
        sigma_noise: float = 1.0,
        n_samples: int = 64,
        seed: int = 0,
        parameters: ParameterSpec = "all",
        exclude_norm: bool = False,
        tangent_batching: TangentBatching = "loop",
        progress: bool | None = None,
    ):
        self.likelihood = make_likelihood(likelihood, sigma_noise)
        if isinstance(self.likelihood, Categorical) and sigma_noise != 1.0:
            raise ValueError(
                f"`sigma_noise` applies to regression only; got sigma_noise={sigma_noise} with a "
                "classification likelihood. Leave it at 1.0."
            )
        self.linearisation = Linearisation(
            model, parameters, exclude_norm=exclude_norm, tangent_batching=tangent_batching
        )
        selection = self.linearisation.selection
        self.prior = make_prior(prior_precision, selection.group_ids, selection.names)
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.seed = int(seed)
        self.progress = progress
        self._samples: Tensor | None = None

    @property
    def model(self) -> nn.Module:
        """The user's network (never modified)."""
        return self.linearisation.model

    @property
    def n_params(self) -> int:
        """``D``, the number of linearised parameters."""
        return self.linearisation.n_params

    @property
    def prior_precision(self) -> Tensor:
        """``[G]`` prior precision: one value (isotropic) or one per parameter tensor."""
        return self.prior.precision.clone()

    @property
    def sigma_noise(self) -> Tensor:
        """Gaussian noise standard deviation (1 for classification)."""
        return torch.tensor(float(getattr(self.likelihood, "sigma", 1.0)), dtype=torch.float64)

    @property
    def posterior_samples(self) -> Tensor:
        """``[S, D]`` zero-mean posterior samples ``ζ_s`` over the linearised parameters."""
        self._check_fitted()
        return self._samples

    def _linear_model(
        self, train_loader: DataLoader | tuple[Tensor, Tensor]
    ) -> LinearGaussianModel:
        return LinearGaussianModel(
            self.linearisation, self.likelihood, self.prior, Data(train_loader)
        )

    def _check_fitted(self) -> None:
        if self._samples is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call `.fit(train_loader)` first."
            )

    @abstractmethod
    def fit(self, train_loader: DataLoader | tuple[Tensor, Tensor]) -> BaseLaplace:
        """Infer the posterior from training data; returns ``self``."""

    def predictive_samples(self, x: Tensor) -> Tensor:
        r"""Function samples ``f(x; θ*) + J(x) ζ_s``: ``[S, N, C]``."""
        self._check_fitted()
        return self.linearisation.linearised_forward(x, self._samples)

    @abstractmethod
    def functional_variance(self, x: Tensor) -> Tensor:
        r"""Posterior covariance of ``f(x)`` per input, ``J(x) Σ J(x)ᵀ``: ``[N, C, C]``."""

    def __call__(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The predictive at inputs ``x`` ``[N, ...]``.

        Returns:
            Classification: predictive probabilities ``[N, C]``, the Monte-Carlo average of
            ``softmax(f_s(x))`` over the posterior samples. Regression: the mean ``f(x; θ*)``
            ``[N, C]`` and the functional covariance ``[N, C, C]`` (add ``σ²`` for the noise).
        """
        self._check_fitted()
        if isinstance(self.likelihood, Categorical):
            return torch.softmax(self.predictive_samples(x), dim=-1).mean(0)
        return self.linearisation.forward(x), self.functional_variance(x)
