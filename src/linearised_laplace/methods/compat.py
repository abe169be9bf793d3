"""laplace-torch's names on a fitted method: the training statistics and the prior per weight.

They let code written for laplace-torch's ``Laplace`` read a fitted
:class:`~linearised_laplace.Laplace` (``n_data``, ``n_outputs``, ``log_likelihood``,
``prior_precision_diag``) with laplace-torch's meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..exceptions import NotFittedError
from ..model.likelihoods import Gaussian
from ..model.linear_model import LinearGaussianModel


@dataclass(frozen=True)
class TrainingFit:
    """What a fit saw of its training data, at the network's outputs ``f_i = f(x_i; θ*)``.

    Attributes:
        n_data: ``n``, training points; ``n_outputs``: ``C``, outputs the likelihood sees.
        loss: laplace-torch's training loss: ``½ Σ_i ‖y_i − f_i‖²`` for a Gaussian (free of ``σ``),
            else ``−Σ_i log p(y_i | f_i)``.
    """

    n_data: int
    n_outputs: int
    loss: float

    @classmethod
    def of(cls, model: LinearGaussianModel) -> TrainingFit:
        """One pass over ``model``'s training data (the outputs only; summed over ranks)."""
        loss = torch.zeros((), dtype=torch.float64, device=model.features.device)
        for _, x, y in model.data.batches():
            f = model.features.forward(x).to(torch.float64)
            y = y.to(f.device)
            if isinstance(model.likelihood, Gaussian):
                loss += 0.5 * ((y.reshape(f.shape).to(f.dtype) - f) ** 2).sum()
            else:
                loss -= model.likelihood.log_prob(f, y).sum()
        return cls(len(model.data), model.n_outputs, float(model.data.all_reduce(loss)))


class LaplaceTorchCompat:
    """laplace-torch's statistics of a fit (a mixin of :class:`~linearised_laplace.Laplace`)."""

    _training: TrainingFit | None = None

    @property
    def prior_precision_diag(self) -> Tensor:
        """``[D]`` float64 prior precision of each linearised weight, in the weights' coordinates.

        ``α_g`` repeated over its tensor's weights; with the g-prior ``α_g / s_d²`` (the prior is on
        ``θ_d / s_d``, so it needs a fit's scale ``s``). Undefined for a Nyström basis (the prior is
        isotropic in it, degenerate outside).
        """
        if self.g_prior and self.scale is None:
            raise NotFittedError(
                "With g_prior=True a weight's prior precision is α/s², and the scale s comes from "
                "the training data: call `.fit(train_loader)` first."
            )
        return self.coordinates.prior_diag_to_parameters(self.prior.diag())

    @property
    def n_data(self) -> int:
        """``n``, the training points the last fit saw."""
        return self._training_fit("n_data").n_data

    @property
    def n_outputs(self) -> int:
        """``C``, the outputs per point the likelihood sees (the network's, without an output map)."""
        return self._training_fit("n_outputs").n_outputs

    @property
    def log_likelihood(self) -> Tensor:
        """laplace-torch's ``log_likelihood``: ``Σ_i log p(y_i | f(x_i; θ*))`` on the training data.

        0-d float64, at the current ``σ``: ``−½ ‖y − f‖² / σ² − n C log(σ √(2π))`` for regression,
        ``Σ_i log softmax(f_i)_{y_i}`` for classification.
        """
        fit = self._training_fit("log_likelihood")
        value = -fit.loss
        if isinstance(self.likelihood, Gaussian):
            sigma = self.likelihood.sigma
            norm = fit.n_data * fit.n_outputs * math.log(sigma * math.sqrt(2 * math.pi))
            value = value / sigma**2 - norm
        return torch.tensor(value, dtype=torch.float64)

    def _training_fit(self, what: str) -> TrainingFit:
        self.check_fitted()
        if self._training is None:
            raise NotFittedError(
                f"`{what}` is a statistic of the training data: call `.fit(train_loader)` (a "
                "loaded posterior does not keep its data)."
            )
        return self._training
