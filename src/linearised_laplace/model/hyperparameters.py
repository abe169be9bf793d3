"""The hyperparameters of linearised Laplace, in one frozen value: the prior precision and ``σ``.

A :class:`~linearised_laplace.Laplace` holds one :class:`Hyperparameters`; its ``prior_precision``
and ``sigma_noise`` setters are the only writers, and each new value is validated once, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .likelihoods import Likelihood, as_sigma_noise, with_noise
from .priors import Prior, make_prior


@dataclass(frozen=True)
class Hyperparameters:
    """The prior precision ``α`` and the likelihood (with its Gaussian noise ``σ``).

    Attributes:
        precision: ``[1]`` (isotropic), ``[G]`` per parameter group or ``[D]`` per weight (float64,
            positive).
        likelihood: The likelihood; a :class:`~linearised_laplace.Gaussian` carries ``σ``.
    """

    precision: Tensor
    likelihood: Likelihood

    @classmethod
    def of(
        cls, precision, likelihood: Likelihood, group_ids: Tensor, group_names: Sequence[str]
    ) -> Hyperparameters:
        """Validated hyperparameters for coordinates with these prior groups."""
        return cls(make_prior(precision, group_ids, group_names).precision, likelihood)

    @property
    def sigma(self) -> float:
        """``σ`` (1 for a likelihood without noise)."""
        return float(getattr(self.likelihood, "sigma", 1.0))

    def agrees(self, precision: Tensor, likelihood: Likelihood) -> bool:
        """Whether a fit at this prior precision and likelihood is at these hyperparameters."""
        same_noise = getattr(likelihood, "sigma", 1.0) == self.sigma
        return torch.equal(precision.cpu(), self.precision.cpu()) and same_noise

    def prior(self, group_ids: Tensor, group_names: Sequence[str]) -> Prior:
        """The prior over coordinates with these groups."""
        return make_prior(self.precision, group_ids, group_names)

    def with_precision(
        self, precision, group_ids: Tensor, group_names: Sequence[str]
    ) -> Hyperparameters:
        """A copy with a new prior precision, validated against the groups."""
        return replace(self, precision=make_prior(precision, group_ids, group_names).precision)

    def with_sigma(self, sigma) -> Hyperparameters:
        """A copy with a new noise ``σ`` (a positive number or one-element tensor), validated."""
        return replace(self, likelihood=with_noise(self.likelihood, as_sigma_noise(sigma)))
