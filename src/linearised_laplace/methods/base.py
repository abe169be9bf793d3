r"""The one linearised-Laplace class: coordinates × posterior, with its hyperparameters.

A method linearises ``model`` at its parameters ``θ*`` as they are when ``fit`` or
``optimize_prior_precision`` starts (a network trained after the method was built is linearised at
its trained weights; anything fitted at other weights is discarded), and infers the posterior of
the tangent linear model ``f(x; θ*) + J(x) ζ`` in its
:class:`~linearised_laplace.coordinates.Coordinates` (g-prior scaled, a subnetwork, a Nyström
basis). Mixed in: the predictive (:mod:`~linearised_laplace.methods.predictive`), prior tuning
(:mod:`~linearised_laplace.tuning.prior`), laplace-torch's statistics
(:mod:`~linearised_laplace.methods.compat`) and the file format
(:mod:`~linearised_laplace.methods.files`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from ..coordinates import Coordinates
from ..core import persistence
from ..core.checks import check_memory_gib, check_positive_int, check_seed
from ..core.memory import MemoryPlan, default_budget_gib, plan_memory
from ..core.progress import progress_note
from ..exceptions import NotFittedError
from ..model.data import Data, TrainingData
from ..model.hyperparameters import Hyperparameters
from ..model.likelihoods import Likelihood, make_likelihood
from ..model.linear_model import LinearGaussianModel
from ..model.priors import Prior
from ..network.inputs import as_inputs
from ..network.linearisation import Linearisation, TangentBatching
from ..network.parameters import ParameterSpec
from ..posteriors import Posterior
from ..tuning.prior import PriorTuning
from .compat import LaplaceTorchCompat, TrainingFit
from .files import SavedPosterior
from .plan import PILOT_FRACTION, CostPlan, plan_fit
from .predictive import Predictive

LikelihoodSpec = Literal["classification", "regression"] | Likelihood
__all__ = ["Laplace", "LikelihoodSpec", "TrainingData", "TrainingFit"]


class Laplace(Predictive, PriorTuning, LaplaceTorchCompat, SavedPosterior):
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
        coordinates: Keywords of :class:`~linearised_laplace.coordinates.Coordinates` (``ranking``,
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
        memory_gib: The fit's memory budget in GiB (``None``: half the memory available when it
            starts). A fit that needs more (its samples, solver state, preconditioner or dense
            GGN) is refused before its solves, naming the budget it needs; see
            :attr:`memory_plan`.
        feature_memory_gib: A further cap on the training features ``Φ`` ``[n, C, P]``, held
            where they fit in what the budget leaves (``None``: no further cap; ``0``: never),
            making every later data pass a matrix product.
        progress: Progress bars on long passes (``None``: only on a terminal).
        enable_backprop: Make the predictive differentiable in ``x`` (laplace-torch's keyword):
            ``__call__``, ``predictive_samples``, ``functional_variance`` and
            ``functional_covariance`` keep the autograd graph to inputs that require grad.

    Attributes:
        coordinates: The :class:`~linearised_laplace.coordinates.Coordinates`; ``posterior``: the
            backend; ``em_history``: the last EM run's records and ``em_costs`` its stages' wall
            and CPU seconds; ``memory_plan``: the last fit's
            :class:`~linearised_laplace.core.memory.MemoryPlan`.
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
        memory_gib: float | None = None,
        feature_memory_gib: float | None = None,
        progress: bool | None = None,
        enable_backprop: bool = False,
    ):
        lin = Linearisation(
            model,
            parameters,
            exclude_norm=exclude_norm,
            tangent_batching=tangent_batching,
            enable_backprop=enable_backprop,
        )
        self._hyperparameters = Hyperparameters.of(
            prior_precision,
            make_likelihood(likelihood, sigma_noise),
            lin.selection.group_ids,
            lin.selection.names,
        )
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.seed = check_seed(seed)
        self.g_prior = bool(g_prior)
        probes = check_positive_int("g_prior_probes", g_prior_probes)
        self.exclude_norm = bool(exclude_norm)
        self.memory_gib = check_memory_gib("memory_gib", memory_gib, positive=True)
        self.feature_memory_gib = check_memory_gib("feature_memory_gib", feature_memory_gib)
        self.memory_plan: MemoryPlan | None = None
        self.progress = progress
        self.coordinates = Coordinates(
            lin, g_prior=self.g_prior, g_prior_probes=probes, **(coordinates or {})
        )
        self.coordinates.check_prior(self.prior)
        self.posterior = posterior
        self.em_history: list[dict] = []
        self.em_costs: dict[str, dict[str, float]] = {}
        self._unfitted_reason: str | None = None

    linearisation = property(lambda self: self.coordinates.linearisation, doc="The linearisation.")
    model = property(lambda self: self.linearisation.model, doc="The network (never modified).")
    n_params = property(lambda self: self.linearisation.n_params, doc="``D``, linearised weights.")
    scale = property(lambda self: self.coordinates.scale, doc="``[D]`` g-prior scale, or None.")

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The prior precision and the likelihood with its ``σ``, as one frozen value.

        Settable to a new value (``la.hyperparameters.with_precision(...).with_sigma(...)``), which
        changes both at once; the fitted posterior follows as for the two setters below.
        """
        return self._hyperparameters

    @hyperparameters.setter
    def hyperparameters(self, value: Hyperparameters) -> None:
        if not isinstance(value, Hyperparameters):
            raise TypeError(
                f"`hyperparameters` must be a Hyperparameters value, got {type(value).__name__}; "
                "derive one with la.hyperparameters.with_precision(...) or .with_sigma(...)."
            )
        self._set(value.with_precision(value.precision, *self.coordinates.groups()))

    likelihood = property(lambda self: self._hyperparameters.likelihood, doc="The likelihood.")

    @property
    def prior(self) -> Prior:
        """The prior over the coordinates (its groups are theirs: after a fit, a subnetwork's)."""
        return self._hyperparameters.prior(*self.coordinates.groups())

    @property
    def prior_precision(self) -> Tensor:
        """Prior precision: ``[1]`` (isotropic), ``[G]`` per parameter tensor or ``[D]`` per weight.

        Settable, as in laplace-torch, to as many positive values as at construction (one, one per
        tensor or one per weight). A fitted posterior follows at once where it can: an exact-family
        one is refactorised from its GGN; a sampled or loaded one needs ``.fit(train_loader)``
        again and raises :class:`~linearised_laplace.NotFittedError` until then.
        """
        return self._hyperparameters.precision.clone()

    @prior_precision.setter
    def prior_precision(self, value: float | list[float] | Tensor) -> None:
        self._set(self._hyperparameters.with_precision(value, *self.coordinates.groups()))

    @property
    def sigma_noise(self) -> Tensor:
        """Gaussian noise standard deviation (1 for classification): 0-d float64.

        Settable, as in laplace-torch, to a positive number or a one-element tensor (a classification
        likelihood takes only 1). A fitted exact-family posterior is refactorised from its GGN
        (``M ∝ σ⁻²``) at once, as if constructed with that ``σ`` (a ranked subnetwork stays as
        chosen); a sampled posterior, a loaded one and the g-prior (``s ∝ σ``) need
        ``.fit(train_loader)`` again, and raise :class:`~linearised_laplace.NotFittedError` until.
        """
        return torch.tensor(self._hyperparameters.sigma, dtype=torch.float64)

    @sigma_noise.setter
    def sigma_noise(self, value: float | Tensor) -> None:
        self._set(self._hyperparameters.with_sigma(value))

    def _set(self, new: Hyperparameters) -> None:
        """Take new hyperparameters; the fitted posterior follows them, or is dropped with why."""
        old, self._hyperparameters = self._hyperparameters, new
        if self.posterior.samples is None or old.agrees(new.precision, new.likelihood):
            return
        fitted = self.posterior.model
        if fitted is not None and new.agrees(fitted.prior.precision, fitted.likelihood):
            return
        noise_changed = new.sigma != old.sigma
        if not (noise_changed and self.g_prior) and self.posterior.at(
            new.precision, new.sigma, self.seed, self.progress
        ):
            return
        self.posterior.forget()
        if noise_changed and self.g_prior:
            self.coordinates.forget()
        what = "sigma_noise" if noise_changed else "prior_precision"
        was = f"{old.sigma:g}" if noise_changed else f"{old.precision.tolist()}"
        self._unfitted_reason = (
            f"This {type(self).__name__} was fitted at {what}={was}; its posterior depends on it "
            f"and only a fit refits it at the new value: call `.fit(train_loader)` again."
        )

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
        return LinearGaussianModel(self.coordinates.features(), self.likelihood, self.prior, data)

    def _fit_model(self, train_loader: TrainingData) -> LinearGaussianModel:
        model = self.linear_model(train_loader)
        self.memory_plan = self._plan_memory(model)  # refused here, before any solve
        progress_note(self.memory_plan.summary(), enabled=self.progress)
        if self.posterior.wants_kronecker(model):
            kronecker = self.coordinates.kronecker(model.data, model.likelihood)
            model = dataclasses.replace(model, kronecker=kronecker)
        if self.memory_plan.hold_features:
            model = model.with_dense_features(progress=self.progress)
        self._training = TrainingFit.of(model)
        return model

    def _plan_memory(self, model: LinearGaussianModel) -> MemoryPlan:
        """What the fit of ``model`` will hold, against ``memory_gib`` (refused if too little)."""
        budget = self.memory_gib
        if budget is None:
            budget = default_budget_gib(model.features.device)
        needs = self.posterior.memory_needs(model, self.n_samples)
        limit = 0.0 if model.data.shard.world > 1 else self.feature_memory_gib
        return plan_memory(needs, model.features_gib, budget, limit)

    def plan(
        self,
        train_loader: TrainingData,
        *,
        em: bool = True,
        fraction: float = PILOT_FRACTION,
        **em_options,
    ) -> CostPlan:
        """Before a long fit: its path, memory and each stage's time (:mod:`~.methods.plan`).

        Estimates ``optimize_prior_precision(train_loader, **em_options)`` (``em=False``: ``fit``)
        from a pilot on ``fraction`` of the data, or a dense solve from its flops; ``print`` it.
        The method's own fit, prior and history are left as they were.
        """
        if em_options and not em:
            raise ValueError(f"{sorted(em_options)} are EM settings; with em=False leave them out.")
        return plan_fit(self, train_loader, em_options if em else None, fraction)

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
