r"""The one linearised-Laplace class: coordinates × posterior, with the predictive, EM and files.

A method linearises ``model`` at its parameters ``θ*`` as they are when ``fit`` or
``optimize_prior_precision`` starts (a network trained after the method was built is linearised at
its trained weights; anything fitted at other weights is discarded), and infers the posterior of
the tangent linear model ``f(x; θ*) + J(x) ζ`` in its :class:`~linearised_laplace.coordinates.coordinates.
Coordinates` (g-prior scaled, a subnetwork, a Nyström basis). Predictions are centred on the
network's own outputs; the posterior enters through zero-mean samples or its covariance.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..coordinates.coordinates import Coordinates
from ..core import persistence
from ..core.checks import (
    check_finite,
    check_memory_gib,
    check_positive,
    check_positive_int,
    check_seed,
)
from ..exceptions import NotFittedError
from ..metrics import linearised_joint_nll, linearised_nll
from ..model.data import Data
from ..model.likelihoods import (
    Categorical,
    Gaussian,
    Likelihood,
    as_sigma_noise,
    make_likelihood,
    with_noise,
)
from ..model.linear_model import FEATURE_MEMORY_GIB, LinearGaussianModel
from ..model.priors import make_prior
from ..network.inputs import Inputs, as_inputs
from ..network.linearisation import Linearisation, TangentBatching
from ..network.parameters import ParameterSpec
from ..posteriors import Posterior
from ..solvers.mean import MeanMode, mean_mode
from ..tuning.checkpoint import run_fingerprint
from ..tuning.em import check_em_settings, run_em
from ..tuning.state import EMState

LikelihoodSpec = Literal["classification", "regression"] | Likelihood
TrainingData = DataLoader | tuple[Inputs, Tensor]
PRIOR_METHODS = ("em", "gridsearch")
__all__ = ["Laplace", "LikelihoodSpec", "TrainingData", "TrainingFit"]


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


class Laplace:
    """Linearised Laplace in given coordinates with a given posterior.

    Args:
        model: Trained network mapping ``x`` to outputs ``[N, C]``; it is never modified. ``x`` is
            a tensor ``[N, ...]`` (``model(x)``), a tuple of tensors (``model(*x)``) or a dict of
            them (``model(**x)``, e.g. a Hugging Face batch), ``N`` rows each. The outputs may be
            a tensor, a tuple or list (its first element), a dict (its ``"logits"``, else its first
            value) or a ``ModelOutput`` (its ``.logits``): :mod:`~linearised_laplace.network.inputs`.
        likelihood: ``"classification"`` (softmax over ``C`` logits), ``"regression"`` (Gaussian),
            or a :class:`~linearised_laplace.model.likelihoods.Likelihood`.
        posterior: A :class:`~linearised_laplace.posteriors.DensePosterior` or
            :class:`~linearised_laplace.posteriors.SampledPosterior`.
        coordinates: Keywords of :class:`~linearised_laplace.coordinates.coordinates.Coordinates` (``ranking``,
            ``basis``, ``output_map``).
        prior_precision: ``α > 0``, one value per linearised parameter tensor (layerwise), or
            ``[D]``, one per linearised weight (diagonal; not learnt by EM).
        sigma_noise: Gaussian noise standard deviation (regression only): a positive number or a
            one-element tensor; settable after ``fit`` (see :attr:`sigma_noise`).
        n_samples: Posterior samples ``S`` drawn by ``fit``.
        seed: Seeds every random draw; equal seeds give equal samples.
        parameters: Which parameters to linearise: ``"all"``, ``"last_layer"``, names or patterns,
            or flat indices (see :func:`~linearised_laplace.network.parameters.select_parameters`).
        exclude_norm: Leave normalisation-layer affine parameters out.
        g_prior: Rescale features to unit GGN diagonal and put the prior on rescaled weights.
        g_prior_probes: Probes of the per-example estimate of ``diag(JᵀBJ)``, used when one
            example's Jacobian is too large to build (it is exact otherwise).
        tangent_batching: ``"auto"`` (the faster, measured on the first batch), ``"loop"`` or
            ``"vmap"`` over samples in JVPs and VJPs.
        feature_memory_gib: Hold the training features ``Φ`` ``[n, C, P]`` while they fit in this
            many GiB (``0``: never), making every later data pass a matrix product.
        progress: Progress bars on long passes (``None``: only on a terminal).
        enable_backprop: Make the predictive differentiable in ``x`` (laplace-torch's keyword):
            ``__call__``, ``predictive_samples``, ``functional_variance`` and
            ``functional_covariance`` keep the autograd graph to inputs that require grad.

    Attributes:
        coordinates: The :class:`~linearised_laplace.coordinates.coordinates.Coordinates`; ``posterior``: the
            backend; ``em_history``: the last EM run's records.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: LikelihoodSpec = "classification",
        *,
        posterior: Posterior,
        coordinates: dict | None = None,
        prior_precision: float | list[float] | Tensor = 1.0,
        sigma_noise: float | Tensor = 1.0,
        n_samples: int = 64,
        seed: int = 0,
        parameters: ParameterSpec = "all",
        exclude_norm: bool = False,
        g_prior: bool = False,
        g_prior_probes: int = 8,
        tangent_batching: TangentBatching = "auto",
        feature_memory_gib: float = FEATURE_MEMORY_GIB,
        progress: bool | None = None,
        enable_backprop: bool = False,
    ):
        self.likelihood = make_likelihood(likelihood, sigma_noise)
        lin = Linearisation(
            model,
            parameters,
            exclude_norm=exclude_norm,
            tangent_batching=tangent_batching,
            enable_backprop=enable_backprop,
        )
        self.prior = make_prior(prior_precision, lin.selection.group_ids, lin.selection.names)
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.seed = check_seed(seed)
        self.g_prior = bool(g_prior)
        probes = check_positive_int("g_prior_probes", g_prior_probes)
        self.exclude_norm = bool(exclude_norm)
        self.feature_memory_gib = check_memory_gib("feature_memory_gib", feature_memory_gib)
        self.progress = progress
        self.coordinates = Coordinates(
            lin, g_prior=self.g_prior, g_prior_probes=probes, **(coordinates or {})
        )
        self.coordinates.check_prior(self.prior)
        self.posterior = posterior
        self.em_history: list[dict] = []
        self._training: TrainingFit | None = None
        self._unfitted_reason: str | None = None

    linearisation = property(lambda self: self.coordinates.linearisation, doc="The linearisation.")
    model = property(lambda self: self.linearisation.model, doc="The network (never modified).")
    n_params = property(lambda self: self.linearisation.n_params, doc="``D``, linearised weights.")
    scale = property(lambda self: self.coordinates.scale, doc="``[D]`` g-prior scale, or None.")

    @property
    def prior_precision(self) -> Tensor:
        """Prior precision: ``[1]`` (isotropic), ``[G]`` per parameter tensor or ``[D]`` per weight."""
        return self.prior.precision.clone()

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
    def sigma_noise(self) -> Tensor:
        """Gaussian noise standard deviation (1 for classification): 0-d float64.

        Settable, as in laplace-torch, to a positive number or a one-element tensor (a classification
        likelihood takes only 1). A fitted exact-family posterior is refactorised from its GGN
        (``M ∝ σ⁻²``) at once, as if constructed with that ``σ`` (a ranked subnetwork stays as
        chosen); a sampled posterior, a loaded one and the g-prior (``s ∝ σ``) need
        ``.fit(train_loader)`` again, and raise :class:`~linearised_laplace.NotFittedError` until.
        """
        return torch.tensor(float(getattr(self.likelihood, "sigma", 1.0)), dtype=torch.float64)

    @sigma_noise.setter
    def sigma_noise(self, value: float | Tensor) -> None:
        old = float(self.sigma_noise)
        likelihood = with_noise(self.likelihood, as_sigma_noise(value))
        if likelihood == self.likelihood:
            return
        self.likelihood = likelihood
        if self.posterior.samples is None:
            return
        if self.g_prior or not self.posterior.at_noise(likelihood.sigma, self.seed, self.progress):
            self.posterior.forget()
            if self.g_prior:
                self.coordinates.forget()
            self._unfitted_reason = (
                f"This {type(self).__name__} was fitted at sigma_noise={old:g}; its posterior "
                f"depends on σ (B = I/σ²) and only a fit refits it at sigma_noise="
                f"{likelihood.sigma:g}: call `.fit(train_loader)` again."
            )

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

    @property
    def posterior_samples(self) -> Tensor:
        """``[S, D]`` zero-mean posterior samples ``ζ_s`` over the linearised parameters."""
        self.check_fitted()
        return self.coordinates.to_parameters(self.posterior.samples)

    def linear_model(self, train_loader: TrainingData) -> LinearGaussianModel:
        """The tangent linear model on the training data, in the posterior's coordinates.

        Linearises at the model's current weights (forgetting a fit at others), and fits what the
        coordinates take from the data (a ranked subnetwork, the g-prior scale, a Nyström basis)
        the first time.
        """
        self._unfitted_reason = None
        if self.linearisation.changed() is not None:
            self.linearisation.refresh()
            self.coordinates.forget()
            self.posterior.forget()
        data = Data(train_loader)
        x = data.subset(torch.zeros(1))[0]
        as_inputs(x, self.linearisation.dtype, "the train_loader's inputs")
        if data.shard.world > 1:
            self.posterior.check_parallel()
            signature = persistence.model_signature(self.linearisation.snapshot())
            precision = self.prior.precision.tolist()
            fingerprint = data.fingerprint()
            data.shard.check_agree(
                parameters=signature, seed=self.seed, data=fingerprint, prior_precision=precision
            )
        self.coordinates.fit(data, self.likelihood, self.prior, self.seed, self.progress)
        self.prior = make_prior(self.prior.precision, *self.coordinates.groups())
        return LinearGaussianModel(self.coordinates.features(), self.likelihood, self.prior, data)

    def _fit_model(self, train_loader: TrainingData) -> LinearGaussianModel:
        model = self.linear_model(train_loader).with_dense_features(
            self.feature_memory_gib, self.progress
        )
        self._training = TrainingFit.of(model)
        return model

    def g_prior_scale(self, train_loader: TrainingData) -> Tensor:
        """The g-prior's scale ``s = diag(JᵀBJ)^{-1/2}`` ``[D]`` on the training data.

        Computed once (the first ``fit`` or EM computes the same and keeps it), so that other
        code — an exact baseline, a plot — can use the very scale this method uses.
        """
        if not self.g_prior:
            raise ValueError("This method has g_prior=False; construct it with g_prior=True.")
        if self.scale is None:
            self.linear_model(train_loader)
        return self.scale

    def check_fitted(self) -> None:
        """Raise :class:`~linearised_laplace.NotFittedError` unless a posterior is fitted."""
        if self.posterior.samples is None:
            raise NotFittedError(
                self._unfitted_reason
                or f"This {type(self).__name__} is not fitted yet; call `.fit(train_loader)` first."
            )

    def _fitted_data(self, what: str) -> Posterior:
        """The posterior, checked to hold the fit's training data at the model's current weights."""
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

    def fit(self, train_loader: TrainingData) -> Laplace:
        """Infer the posterior at the current hyperparameters; returns ``self``.

        Args:
            train_loader: Training data yielding ``(x, y)``: a DataLoader over a map-style dataset,
                or a pair ``(x, y)``; ``x`` as the model takes it (a tensor, a tuple or a dict of
                tensors). A dataset may yield Hugging Face dicts: their ``"labels"`` are ``y``
                and are not passed to the model. Classification ``y`` are integer labels ``[N]``;
                regression ``y`` is ``[N, C]`` (or ``[N]`` when ``C = 1``).
        """
        self.posterior.fit(self._fit_model(train_loader), self.n_samples, self.seed, self.progress)
        return self

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

    def functional_variance(self, x: Inputs) -> Tensor:
        r"""Posterior covariance of ``f(x)`` per input, ``J(x) Σ J(x)ᵀ``: ``[N, C, C]``.

        Exact for a dense posterior; the sample estimate ``(1/S) Σ_s (J ζ_s)(J ζ_s)ᵀ`` otherwise.
        ``x`` as in :meth:`__call__`.
        """
        half = self._functional_factor(x)
        return (half @ half.transpose(1, 2)).to(self.linearisation.dtype)

    def _marginal_variance(self, x: Inputs) -> Tensor:
        """``[N, C]``: the diagonal of :meth:`functional_variance`, without its ``C × C`` blocks."""
        return self._functional_factor(x).square().sum(-1).to(self.linearisation.dtype)

    def functional_covariance(self, x: Inputs) -> Tensor:
        r"""Joint posterior covariance of ``f`` over the batch, ``J(x_a) Σ J(x_b)ᵀ``: ``[N, C, N, C]``.

        laplace-torch's ``joint=True``. Exact for a dense posterior; the sample estimate
        ``(1/S) Σ_s (J(x_a) ζ_s)(J(x_b) ζ_s)ᵀ`` otherwise. Its diagonal blocks ``[a, :, a, :]``
        are :meth:`functional_variance`; ``.reshape(N·C, N·C)`` gives the matrix. ``x`` as in
        :meth:`__call__`.
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

    def select_prior_precision(
        self,
        val_loader: TrainingData,
        grid: Tensor | None = None,
        objective: Literal["nll", "joint"] = "nll",
        kappa: int = 5,
    ) -> dict:
        r"""Choose ``α`` on a grid by a validation score, then refit at it.

        The alternative to EM that the ELLA paper and laplace-torch's ``gridsearch`` use; the
        prior becomes isotropic. A dense posterior refactorises the ``P × P`` posterior per grid
        point (cheap for subnetworks and Nyström bases); a sampled one re-solves its samples per
        grid point from the same noise, warm-started, and scores the sample covariance of ``f``.
        Call :meth:`fit` first. A choice at either end of the grid warns: the best ``α`` may lie
        beyond it.

        Args:
            val_loader: Validation data, as for :meth:`fit`.
            grid: Candidate precisions (default ``10^{-4} … 10^{4}``, 21 points).
            objective: ``"nll"``: the marginal NLL (classification with the probit predictive,
                regression with the Gaussian predictive including the noise); ``"joint"``
                (classification): the negative κ-adic joint log-likelihood of ``kappa`` points
                (:func:`~linearised_laplace.metrics.linearised_joint_nll`, 64 function samples of
                the linearised predictive, the same draws for every ``α``), Antorán et al.'s (2023)
                metric of joint predictions.
            kappa: Points per set for ``objective="joint"``.

        Returns:
            ``{"grid", "objective", "scores", "prior_precision", "at_edge"}`` (and ``"nll"``, the
            scores, for ``objective="nll"``).
        """
        fit = self._fitted_data("select_prior_precision")
        if objective not in ("nll", "joint"):
            raise ValueError(f"`objective` must be 'nll' or 'joint', got {objective!r}.")
        kappa = check_positive_int("kappa", kappa)
        if objective == "joint" and isinstance(self.likelihood, Gaussian):
            raise ValueError(
                "objective='joint' scores sets of class labels (the κ-adic joint log-likelihood); "
                "for regression use objective='nll'."
            )
        grid = check_positive(
            "grid", torch.logspace(-4, 4, 21, dtype=torch.float64) if grid is None else grid
        )
        val = Data(val_loader)
        x, y = val.subset(torch.arange(len(val)))
        x = self.linearisation.check_inputs(x, "the val_loader's inputs")
        check_finite("The val_loader targets", y)
        if objective == "joint" and kappa > len(val):
            raise ValueError(
                f"`kappa` ({kappa}) exceeds the {len(val)} validation points; pass a smaller kappa."
            )
        features = self.coordinates.transform(self.linearisation)
        f0 = features.forward(x).to(torch.float64)
        try:
            self.likelihood.check_targets(f0, y.to(f0.device))
        except (TypeError, ValueError) as err:
            raise type(err)(f"The val_loader targets do not fit the model: {err}") from err
        sigma = self.likelihood.sigma if isinstance(self.likelihood, Gaussian) else None

        def score(half: Tensor) -> float:
            if objective == "nll":
                return linearised_nll(f0, half, y, sigma)
            return linearised_joint_nll(f0, half, y, kappa, seed=self.seed)

        scores = fit.grid_search(features, x, grid, score, self.seed, self.progress)
        index = int(torch.tensor(scores).argmin())
        best = float(grid[index])
        self.prior = self.prior.with_precision(best)
        at_edge = len(grid) > 1 and index in (0, len(grid) - 1)
        if at_edge:
            end = "smallest" if index == 0 else "largest"
            warnings.warn(
                f"select_prior_precision chose α = {best:.4g}, the {end} value of the grid: the "
                f"best α may lie beyond it. Extend `grid` past {best:.4g} and select again.",
                UserWarning,
                stacklevel=2,
            )
        chosen = {"grid": grid.tolist(), "objective": objective, "scores": scores}
        chosen.update(prior_precision=best, at_edge=at_edge)
        return chosen | ({"nll": scores} if objective == "nll" else {})

    def optimize_prior_precision(
        self,
        train_loader: TrainingData,
        max_iter: int = 10,
        tol: float = 1e-2,
        *,
        method: Literal["em", "gridsearch"] = "em",
        val_loader: TrainingData | None = None,
        grid: Tensor | None = None,
        mean: str = "tangent",
        update_sigma: bool = False,
        checkpoint: str | Path | None = None,
        **options,
    ) -> list[dict] | dict:
        r"""Learn the prior precision by MacKay EM, ``α_g = γ_g / ‖θ̄_g‖²``, then refit at the result.

        Each step solves for the linear model's mean ``θ̄`` (warm-started) and the effective
        dimension ``γ`` (exact for a dense posterior; for a sampled one estimated from
        warm-started samples whose noise is kept and rescaled across steps).

        ``method="gridsearch"`` (laplace-torch's name) instead fits at the current prior and runs
        :meth:`select_prior_precision` on ``val_loader`` over ``grid``; the EM settings do not
        apply to it.

        Args:
            train_loader: Training data, as for :meth:`fit`.
            max_iter: EM steps at most.
            tol: Stop when every ``|Δ log α|`` (and ``|Δ log σ|``) falls below this.
            method: ``"em"`` (default) or ``"gridsearch"``.
            val_loader: Validation data, as for :meth:`fit` (``"gridsearch"`` only, required).
            grid: Candidate precisions for ``"gridsearch"`` (see :meth:`select_prior_precision`).
            mean: ``"tangent"`` (the linear model's mode with outputs ``J w``; default),
                ``"affine"`` (outputs ``f(x; θ*) + J(w − θ*)``) or ``"network"`` (use ``θ*``,
                as laplace-torch's marglik does: no mean solve and a smaller ``α``, which suits an
                overconfident MAP and can over-widen a calibrated one's predictive; see
                ``benchmarks/results/fashion-mnist-cnn-overconfident/results.md``).
            update_sigma: Also learn the Gaussian noise (regression).
            checkpoint: File to save the state to after every step; a run restarted with the same
                arguments resumes from it.
            **options: A sampled posterior's ``gamma``: ``"function"`` (``(1/K) Σ_k ‖Jζ_k‖²_B``;
                default) or ``"weight"`` estimator, and ``n_em_samples``: ``K`` per E-step
                (default 8; the final draw uses ``n_samples``).

        Returns:
            EM: the history, one dict per step (step 0 is the start): ``prior_precision``,
            ``gamma``, ``mean_norm_sq``, ``sigma_noise``, ``seconds``, also kept as
            ``em_history``. Grid search: the dict of :meth:`select_prior_precision`.
        """
        if method not in PRIOR_METHODS:
            raise ValueError(f"`method` must be one of {PRIOR_METHODS}, got {method!r}.")
        if method == "gridsearch":
            if val_loader is None:
                raise ValueError(
                    "method='gridsearch' scores each α on validation data: pass "
                    "`val_loader=(x_val, y_val)` (or a DataLoader)."
                )
            em_only = {"update_sigma": update_sigma, "checkpoint": checkpoint}
            unused = [name for name, value in em_only.items() if value] + list(options)
            if unused:
                raise ValueError(f"{unused} apply to method='em' only, not to 'gridsearch'.")
            return self.fit(train_loader).select_prior_precision(val_loader, grid)
        if val_loader is not None or grid is not None:
            raise ValueError(
                "`val_loader` and `grid` are for method='gridsearch'; EM learns α from the "
                "training data alone."
            )
        if self.prior.is_diagonal:
            raise ValueError(
                "EM does not learn a per-weight [D] prior precision: MacKay's update "
                "α_d = γ_d / θ̄_d² rests on one weight each and is unstable (a weight near 0 sends "
                "its α to infinity). Start from one value or one per parameter tensor, or use "
                "method='gridsearch'."
            )
        check_em_settings(max_iter, tol)
        self._check_em_options(options)
        if update_sigma and not isinstance(self.likelihood, Gaussian):
            raise ValueError("`update_sigma=True` needs a regression (Gaussian) likelihood.")
        if checkpoint is not None:
            persistence.check_writable(checkpoint, "checkpoint")
        mode = mean_mode(mean)
        model = self._fit_model(train_loader)
        anchor = self.coordinates.anchor()
        em = self.posterior.expectation(model, mode, anchor, self.seed, self.progress, **options)
        settings = {"class": type(self).__name__, "seed": self.seed, "g_prior": self.g_prior}
        settings.update(mean=mode.value, **em.settings)
        start = anchor.clone() if mode is MeanMode.AFFINE else torch.zeros_like(anchor)
        state = run_em(
            em.step,
            EMState(0, self.prior.precision.clone(), float(self.sigma_noise), start),
            self.prior.groups,
            max_iter=max_iter,
            tol=tol,
            n_observations=len(model.data) * model.n_outputs,
            update_sigma=update_sigma,
            clip_gamma=em.estimated,
            checkpoint=checkpoint,
            fingerprint=run_fingerprint(self.linearisation.snapshot(), model.data, **settings),
            progress=self.progress,
        )
        self.prior = self.prior.with_precision(state.precision)
        if isinstance(self.likelihood, Gaussian):
            self.likelihood = Gaussian(state.sigma)
        self.em_history = state.history
        em.refit(state, self.n_samples)
        return self.em_history

    def _check_em_options(self, options: dict) -> None:
        """Refuse, before any work, an EM keyword that this method's E-step does not take."""
        parameters = inspect.signature(self.posterior.expectation).parameters
        accepted = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            takes = (
                f"takes only {accepted}" if accepted else "takes none (its γ and mean are exact)"
            )
            raise TypeError(
                f"optimize_prior_precision() got {unknown}, which {type(self).__name__}'s EM does "
                f"not use: its E-step {takes}. `gamma` and `n_em_samples` are options of "
                "SampledLaplace's sample-based EM; remove them here."
            )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save the fitted posterior to ``path`` (safetensors with a JSON header; no pickle).

        The file holds the linearisation point (every parameter and buffer the network used), the
        samples and hyperparameters, so that :meth:`load` with the same architecture predicts
        identically.
        """
        self.check_fitted()
        tensors = {"samples": self.posterior.samples, "prior_precision": self.prior.precision}
        tensors.update(**self.coordinates.tensors(), **self.posterior.tensors())
        meta = {"class": type(self).__name__, "likelihood": self.likelihood.name}
        meta.update(sigma_noise=float(self.sigma_noise), n_samples=self.n_samples, seed=self.seed)
        meta.update(g_prior=self.g_prior, em_history=self.em_history, **self.settings())
        persistence.write_posterior(path, self.linearisation, tensors, meta)

    def settings(self) -> dict:
        """The constructor settings a saved file records besides the shared ones."""
        return {**self.coordinates.settings(), **self.posterior.settings()}

    @classmethod
    def settings_from(cls, meta: dict, path: str | Path) -> dict:
        """Constructor keywords from a saved file's :meth:`settings`, checked."""
        return {}

    @classmethod
    def load(
        cls, path: str | Path, model: nn.Module, progress: bool | None = None, strict: bool = False
    ) -> Laplace:
        """Load a posterior saved by :meth:`save` onto ``model`` (the same architecture).

        Every tensor is checked against its checksum and for finite values, and every metadata field
        for its type and range; a damaged or edited file raises a ``ValueError`` naming what is
        wrong. Predictions use the file's linearisation point ``θ*``, not ``model``'s weights: if
        those differ, a ``UserWarning`` names the tensor with the largest difference, or, with
        ``strict=True``, a ``ValueError`` is raised.
        """
        tensors, meta, state, shared = persistence.read_posterior(path, cls.__name__, model, strict)
        try:
            la = cls(model, progress=progress, **shared, **cls.settings_from(meta, path))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} holds settings that cannot be built: {err}") from err
        la.linearisation.restore(state)
        la.coordinates.restore(tensors)
        la.prior = make_prior(la.prior.precision, *la.coordinates.groups())
        la.em_history = meta["em_history"]
        la.posterior.restore(tensors, la.linearisation.device)
        return la
