r"""The predictive of a fitted method: function samples, (co)variances and probabilities.

Predictions are centred on the network's own outputs ``f(x; θ*)``; the posterior enters through
zero-mean samples ``ζ_s`` (``f(x; θ*) + J(x) ζ_s``) or, for a dense posterior, its exact covariance
``J(x) Σ J(x)ᵀ``, through the backend's factor ``G`` with ``G Gᵀ = J Σ Jᵀ``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..core.checks import check_positive_int
from ..model.likelihoods import Categorical
from ..network.inputs import Inputs, batch_size, split, take

FACTOR_FLOATS = 2**25
"""Most floats of a functional factor ``[n, C, R]`` formed at once (256 MiB in float64): per-point
(co)variances run over chunks of ``x`` (a dense posterior's factor has ``R = P`` columns)."""


class Predictive:
    """The predictive of :class:`~linearised_laplace.Laplace` (a mixin)."""

    def sample(self, n_samples: int | None = None) -> Tensor:
        """``[n, D]`` posterior samples: the stored ones (all by default), then more.

        Beyond the stored ones a dense posterior draws exact ones; a sampled one raises.
        """
        stored = self.posterior_samples
        if n_samples is None:
            return stored
        n_samples = check_positive_int("n_samples", n_samples)
        if n_samples <= len(stored):
            return stored[:n_samples]
        more = self.posterior.extra_samples(n_samples - len(stored), self.seed)
        return torch.cat([stored, self.coordinates.to_parameters(more.to(stored.dtype))])

    def predictive_samples(self, x: Inputs, n_samples: int | None = None) -> Tensor:
        r"""Function samples ``f(x; θ*) + J(x) ζ_s``: ``[S, N, C]``.

        ``x``: ``N`` inputs as the model takes them (a tensor ``[N, ...]``, a tuple or a dict of
        tensors with ``N`` rows each), as in :meth:`__call__`. ``n_samples`` (as in :meth:`sample`):
        the first ones of the fitted samples (all by default); more than were fitted are exact new
        draws for a dense posterior (from a stream of their own, the same on every call), and a
        ``ValueError`` for a sampled one (construct it with more ``n_samples``).
        """
        samples = self.sample(n_samples)
        return self.linearisation.linearised_forward(self.linearisation.check_inputs(x), samples)

    def _functional_factor(self, x: Inputs) -> Tensor:
        self.check_fitted()
        features = self.coordinates.transform(self.linearisation)
        return self.posterior.functional_factor(features, self.linearisation.check_inputs(x))

    def _per_point(self, x: Inputs, reduce) -> Tensor:
        """``reduce`` of the functional factor, over chunks of ``x`` within :data:`FACTOR_FLOATS`."""
        x = self.linearisation.check_inputs(x)
        first = self._functional_factor(take(x, slice(0, 1)))  # its width C·R sizes the chunks
        parts = [reduce(first)]
        if batch_size(x) > 1:
            chunks = split(take(x, slice(1, None)), max(1, FACTOR_FLOATS // first[0].numel()))
            parts += [reduce(self._functional_factor(part)) for part in chunks]
        return torch.cat(parts).to(self.linearisation.dtype)

    def functional_variance(self, x: Inputs) -> Tensor:
        r"""Posterior covariance of ``f(x)`` per input, ``J(x) Σ J(x)ᵀ``: ``[N, C, C]``.

        Exact for a dense posterior (and a sampler's dense solve); the sample estimate
        ``(1/S) Σ_s (J ζ_s)(J ζ_s)ᵀ`` otherwise. ``x`` as in :meth:`__call__`.
        """
        return self._per_point(x, lambda half: half @ half.transpose(1, 2))

    def _marginal_variance(self, x: Inputs) -> Tensor:
        """``[N, C]``: the diagonal of :meth:`functional_variance`, without its ``C × C`` blocks."""
        return self._per_point(x, lambda half: half.square().sum(-1))

    def functional_covariance(self, x: Inputs) -> Tensor:
        r"""Joint posterior covariance of ``f`` over the batch, ``J(x_a) Σ J(x_b)ᵀ``: ``[N, C, N, C]``.

        laplace-torch's ``joint=True``. Exact for a dense posterior (and a sampler's dense solve);
        the sample estimate ``(1/S) Σ_s (J(x_a) ζ_s)(J(x_b) ζ_s)ᵀ`` otherwise. Its diagonal blocks
        ``[a, :, a, :]`` are :meth:`functional_variance`; ``.reshape(N·C, N·C)`` gives the matrix.
        ``x`` as in :meth:`__call__`.
        """
        half = self._functional_factor(x)
        return torch.einsum("acr,bdr->acbd", half, half).to(self.linearisation.dtype)

    def __call__(
        self,
        x: Inputs,
        link_approx: Literal["mc", "probit"] = "mc",
        diagonal_output: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The predictive at ``N`` inputs ``x``, in the network's dtype.

        ``x`` is what the model takes: a tensor ``[N, ...]`` (or numpy array), a tuple of them
        (``model(*x)``) or a dict of them (``model(**x)``), each with ``N`` rows.

        ``link_approx`` (classification): ``"mc"`` averages ``softmax(f_s(x))`` over the samples;
        ``"probit"`` is MacKay's ``softmax(f(x; θ*) / (1 + π σ²/8)^{1/2})``, ``σ²`` the functional
        variances. Returns classification probabilities ``[N, C]``, or for regression the mean
        ``f(x; θ*)`` ``[N, C]`` and the functional covariance ``[N, C, C]`` (add ``σ²`` for the
        observation noise), or with ``diagonal_output=True`` (laplace-torch's keyword) only its
        diagonal, the variances ``[N, C]``.
        """
        self.check_fitted()
        x = self.linearisation.check_inputs(x)
        if not isinstance(self.likelihood, Categorical):
            variance = self._marginal_variance if diagonal_output else self.functional_variance
            return self.linearisation.forward(x), variance(x)
        if diagonal_output:
            raise ValueError(
                "`diagonal_output=True` applies to regression (the variances [N, C] instead of the "
                "covariances [N, C, C]); classification returns probabilities [N, C]. Drop it."
            )
        if link_approx == "mc":
            return torch.softmax(self.predictive_samples(x), dim=-1).mean(0)
        if link_approx == "probit":
            variance = self._marginal_variance(x)
            kappa = (1 + math.pi * variance / 8).rsqrt()
            return torch.softmax(kappa * self.linearisation.forward(x), dim=-1)
        raise ValueError(f"`link_approx` must be 'mc' or 'probit', got {link_approx!r}.")
