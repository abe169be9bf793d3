r"""What every linearised-Laplace method shares: configuration, the predictive, EM and persistence.

A method linearises ``model`` at its parameters ``θ*`` as they are when ``fit`` or
``optimize_prior_precision`` starts (a network trained after the method was built is linearised at
its trained weights; anything fitted at other weights is discarded), and infers the posterior of
the tangent linear model ``f(x; θ*) + J(x) ζ``. Predictions are centred on the network's own outputs; the
posterior enters through zero-mean samples ``ζ_s`` or, for exact methods, the covariance.

With ``g_prior=True`` the features are ``J̃ = J diag(s)``, ``s = diag(JᵀBJ)^{-1/2}`` (computed once,
at the first fit), and the prior is placed on the rescaled weights ``θ / s``. Internally samples
live in those coordinates; ``posterior_samples`` reports them in the original ones.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import persistence
from .._checks import check_positive_int, check_seed
from ..data import Data
from ..em import EMState, EStep, check_em_settings, run_em
from ..exceptions import NotFittedError
from ..features import FeatureOperator
from ..g_prior import ScaledFeatures, g_prior_scale, ggn_diagonal
from ..likelihoods import Categorical, Gaussian, Likelihood, make_likelihood
from ..linear_model import FEATURE_MEMORY_GIB, LinearGaussianModel
from ..linearisation import BATCHINGS, Linearisation, TangentBatching, as_inputs
from ..mean import MeanMode, MeanProblem, mean_mode, solve_mean
from ..noise import NoiseSource
from ..parameters import ParameterSelection, ParameterSpec
from ..priors import make_prior
from ..solvers import SGD
from ..solvers.newton import Newton

LikelihoodSpec = Literal["classification", "regression"] | Likelihood
TrainingData = DataLoader | tuple[Tensor, Tensor]


class BaseLaplace(ABC):
    """Shared constructor, predictive, EM driver and persistence of the linearised-Laplace methods.

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
        g_prior: Rescale features to unit GGN diagonal and put the prior on rescaled weights.
        g_prior_probes: Probes of the per-example estimate of ``diag(JᵀBJ)``, used when one
            example's Jacobian is too large to build (it is exact otherwise).
        tangent_batching: ``"auto"`` (the faster, measured on the first batch), ``"loop"`` or
            ``"vmap"`` over samples in JVPs and VJPs.
        feature_memory_gib: Hold the training features ``Φ`` ``[n, C, D]`` in memory while they
            fit in this many GiB (``0``: never): built once, they make every later data pass a
            matrix product instead of a JVP and a VJP through the network. Larger problems stay
            matrix-free.
        progress: Progress bars on long passes (``None``: only on a terminal).
    """

    _estimates_gamma = True  # EM clips estimated effective dimensions; exact ones are not clipped

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
        g_prior: bool = False,
        g_prior_probes: int = 8,
        tangent_batching: TangentBatching = "auto",
        feature_memory_gib: float = FEATURE_MEMORY_GIB,
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
        self.seed = check_seed(seed)
        self.g_prior = bool(g_prior)
        self.g_prior_probes = check_positive_int("g_prior_probes", g_prior_probes)
        self.exclude_norm = bool(exclude_norm)
        if isinstance(feature_memory_gib, bool) or not (
            isinstance(feature_memory_gib, int | float) and feature_memory_gib >= 0
        ):
            raise ValueError(
                f"`feature_memory_gib` must be a number ≥ 0 (0: never hold the features), got "
                f"{feature_memory_gib!r}."
            )
        self.feature_memory_gib = float(feature_memory_gib)
        self.progress = progress
        self.scale: Tensor | None = None
        self.em_history: list[dict] = []
        self._samples: Tensor | None = None  # [S, D], in the (g-prior scaled) feature coordinates

    # ------------------------------------------------------------------ properties
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
        return self._to_parameters(self._samples)

    # ------------------------------------------------------------------ the linear model
    # The posterior lives in "feature coordinates": the parameters rescaled by the g-prior and,
    # for methods with a basis (Nyström), projected onto it. These hooks convert.
    def _observed(self) -> FeatureOperator:
        """The network's features as the likelihood sees them (e.g. through a forward operator)."""
        return self.linearisation

    def _features(self) -> FeatureOperator:
        """The feature operator in the posterior's coordinates."""
        observed = self._observed()
        scaled = observed if self.scale is None else ScaledFeatures(observed, self.scale)
        return self._transform(scaled)

    def _transform(self, features: FeatureOperator) -> FeatureOperator:
        """Hook: a further map of the (scaled) features, e.g. onto a basis."""
        return features

    def _to_parameters(self, z: Tensor) -> Tensor:
        """``[S, P]`` feature coordinates to ``[S, D]`` parameters."""
        return z if self.scale is None else z * self.scale

    def _anchor(self) -> Tensor:
        """The network weights ``θ*`` in feature coordinates."""
        theta = self.linearisation.theta_star
        return theta if self.scale is None else theta / self.scale

    def _select(self, data: Data) -> None:  # noqa: B027
        """Hook run on the training data before anything else (e.g. subnetwork selection)."""

    def _fit_basis(self, model: LinearGaussianModel) -> None:  # noqa: B027
        """Hook run once the (scaled) linear model exists (e.g. a Nyström basis)."""

    def _sync_weights(self) -> None:
        """Linearise at the model's current weights, forgetting what was fitted at others."""
        if self.linearisation.changed() is not None:
            self.linearisation.refresh()
            self._forget_fit()

    def _check_weights_unchanged(self, what: str) -> None:
        """Raise if the model's weights changed since the fit that ``what`` builds on."""
        changed = self.linearisation.changed()
        if changed is not None:
            raise ValueError(
                f"`{what}` uses the fit at the model's former weights, but the model's {changed} "
                "changed since. Call `.fit(train_loader)` again to linearise at the new weights."
            )

    def _forget_fit(self) -> None:
        """Drop the fitted state that depends on ``θ*`` (subclasses add theirs)."""
        self.scale = None
        self._samples = None

    def _linear_model(self, train_loader: TrainingData) -> LinearGaussianModel:
        self._sync_weights()
        data = Data(train_loader)
        as_inputs(
            data.subset(torch.zeros(1))[0], self.linearisation.dtype, "the train_loader's inputs"
        )
        if data.shard.world > 1:
            self._check_data_parallel(data)
        self._select(data)
        model = LinearGaussianModel(self._observed(), self.likelihood, self.prior, data)
        if self.g_prior and self.scale is None:
            source = NoiseSource(self.seed, stream="g-prior")
            diagonal = ggn_diagonal(model, source, self.g_prior_probes, progress=self.progress)
            self.scale = g_prior_scale(diagonal).to(self.linearisation.dtype)
        if self.scale is not None:
            model = replace(model, features=ScaledFeatures(self._observed(), self.scale))
        self._fit_basis(model)
        return replace(model, features=self._features(), prior=self.prior)

    def _fit_model(self, train_loader: TrainingData) -> LinearGaussianModel:
        """The linear model that fits and EM solve: :meth:`_linear_model` with ``Φ`` held if it fits."""
        return self._linear_model(train_loader).with_dense_features(self.feature_memory_gib)

    def g_prior_scale(self, train_loader: TrainingData) -> Tensor:
        """The g-prior's scale ``s = diag(JᵀBJ)^{-1/2}`` ``[D]`` on the training data.

        Computed once (the first ``fit`` or EM computes the same and keeps it), so that other
        code — an exact baseline, a plot — can use the very scale this method uses.
        """
        if not self.g_prior:
            raise ValueError("This method has g_prior=False; construct it with g_prior=True.")
        if self.scale is None:
            self._linear_model(train_loader)
        return self.scale

    def _check_data_parallel(self, data: Data) -> None:
        """Under ``torch.distributed``: every rank must hold the same model, seed and data."""
        data.shard.check_agree(
            parameters=persistence.model_signature(self.linearisation.snapshot()),
            seed=self.seed,
            data=data.fingerprint(),
            prior_precision=self.prior.precision.tolist(),
        )

    def _check_fitted(self) -> None:
        if self._samples is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call `.fit(train_loader)` first."
            )

    @abstractmethod
    def fit(self, train_loader: TrainingData) -> BaseLaplace:
        """Infer the posterior from training data; returns ``self``."""

    # ------------------------------------------------------------------ predictive
    def _samples_for(self, n_samples: int | None) -> Tensor:
        """``[n, D]`` samples in the original coordinates (all stored ones by default)."""
        samples = self.posterior_samples
        if n_samples is None:
            return samples
        n_samples = check_positive_int("n_samples", n_samples)
        if n_samples > samples.shape[0]:
            raise ValueError(
                f"Only {samples.shape[0]} posterior samples were drawn, {n_samples} were asked for. "
                f"Construct with n_samples={n_samples} and fit again."
            )
        return samples[:n_samples]

    def predictive_samples(self, x: Tensor, n_samples: int | None = None) -> Tensor:
        r"""Function samples ``f(x; θ*) + J(x) ζ_s``: ``[S, N, C]``."""
        samples = self._samples_for(n_samples)
        return self.linearisation.linearised_forward(self.linearisation.check_inputs(x), samples)

    @abstractmethod
    def functional_variance(self, x: Tensor) -> Tensor:
        r"""Posterior covariance of ``f(x)`` per input, ``J(x) Σ J(x)ᵀ``: ``[N, C, C]``."""

    def __call__(
        self, x: Tensor, link_approx: Literal["mc", "probit"] = "mc"
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The predictive at inputs ``x`` ``[N, ...]``.

        Args:
            x: Inputs (a tensor, or a numpy array, which is converted), in the network's dtype.
            link_approx: Classification only. ``"mc"``: average ``softmax(f_s(x))`` over the
                posterior samples (keeps cross-class covariances). ``"probit"``: MacKay's
                ``softmax(f(x; θ*) / (1 + π σ²/8)^{1/2})`` with the functional variances ``σ²``.

        Returns:
            Classification: predictive probabilities ``[N, C]``. Regression: the mean
            ``f(x; θ*)`` ``[N, C]`` and the functional covariance ``[N, C, C]`` (add ``σ²`` for
            the observation noise).
        """
        self._check_fitted()
        x = self.linearisation.check_inputs(x)
        if not isinstance(self.likelihood, Categorical):
            return self.linearisation.forward(x), self.functional_variance(x)
        if link_approx == "mc":
            return torch.softmax(self.predictive_samples(x), dim=-1).mean(0)
        if link_approx == "probit":
            variance = self.functional_variance(x).diagonal(dim1=-2, dim2=-1)
            kappa = (1 + math.pi * variance / 8).rsqrt()
            return torch.softmax(kappa * self.linearisation.forward(x), dim=-1)
        raise ValueError(f"`link_approx` must be 'mc' or 'probit', got {link_approx!r}.")

    # ------------------------------------------------------------------ EM
    def _mean_problem(self, model: LinearGaussianModel, mode: MeanMode) -> MeanProblem:
        return MeanProblem(model, mode, self._anchor())

    def _mean_step(
        self,
        model: LinearGaussianModel,
        mode: MeanMode,
        solver: Newton | SGD,
        init: Tensor,
        preconditioner: Tensor,
        seed: int,
    ) -> tuple[Tensor, float | None]:
        """``θ̄`` ``[D]`` and, for a Gaussian likelihood, ``‖y − g(θ̄)‖²`` (one extra pass)."""
        if mode is MeanMode.NETWORK:
            mean = self._anchor()
            outputs = lambda x: model.features.forward(x)  # noqa: E731
        else:
            problem = self._mean_problem(model, mode)
            mean = self._solve_mean(problem, solver, init, preconditioner, seed)
            outputs = lambda x: problem.outputs(x, mean[None])[0]  # noqa: E731
        if not isinstance(model.likelihood, Gaussian):
            return mean, None
        residual = torch.zeros((), dtype=torch.float64, device=mean.device)
        for _, x, y in model.data.batches():
            residual += (outputs(x) - y.reshape(len(y), -1).to(mean.dtype)).square().sum().double()
        return mean, float(model.data.all_reduce(residual))

    def _solve_mean(
        self,
        problem: MeanProblem,
        solver: Newton | SGD,
        init: Tensor,
        preconditioner: Tensor,
        seed: int,
    ) -> Tensor:
        """``θ̄`` ``[D]`` of a mean problem."""
        return solve_mean(problem, solver, init, preconditioner, seed, self.progress).samples[0]

    def _em(
        self,
        model: LinearGaussianModel,
        e_step: Callable[[EMState], EStep],
        mode: MeanMode,
        max_iter: int,
        tol: float,
        update_sigma: bool,
        checkpoint: str | Path | None,
        settings: dict,
    ) -> EMState:
        """Run EM from scratch or from a matching checkpoint; returns the final state."""
        fingerprint = {
            "class": type(self).__name__,
            "model": persistence.model_signature(self.linearisation.snapshot()),
            "weights": persistence.digest(self.linearisation.snapshot()),
            "data": model.data.fingerprint(),
            "seed": self.seed,
            "g_prior": self.g_prior,
            "initial_prior_precision": self.prior.precision.tolist(),
            "initial_sigma_noise": float(self.sigma_noise),
            "mean": mode.value,
            "update_sigma": update_sigma,
            **settings,
        }
        anchor = self._anchor()
        start = anchor.clone() if mode is MeanMode.AFFINE else torch.zeros_like(anchor)
        state = EMState(0, self.prior.precision.clone(), float(self.sigma_noise), start)
        state = run_em(
            e_step,
            state,
            self.prior.groups,
            max_iter=max_iter,
            tol=tol,
            n_observations=len(model.data) * model.n_outputs,
            update_sigma=update_sigma,
            clip_gamma=self._estimates_gamma,
            checkpoint=checkpoint,
            fingerprint=fingerprint,
            progress=self.progress,
        )
        self.prior = self.prior.with_precision(state.precision)
        if isinstance(self.likelihood, Gaussian):
            self.likelihood = Gaussian(state.sigma)
        self.em_history = state.history
        return state

    def _check_em(
        self,
        max_iter: int,
        tol: float,
        mean: str,
        update_sigma: bool,
        checkpoint: str | Path | None,
        gamma: str = "function",
    ) -> MeanMode:
        """Validate EM arguments before any work; returns the mean mode."""
        check_em_settings(max_iter, tol, gamma)
        if update_sigma and not isinstance(self.likelihood, Gaussian):
            raise ValueError("`update_sigma=True` needs a regression (Gaussian) likelihood.")
        if checkpoint is not None:
            persistence.check_writable(checkpoint, "checkpoint")
        return mean_mode(mean)

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, Tensor]:
        """Fitted tensors to save (subclasses add theirs)."""
        return {}

    def _restore(self, tensors: dict[str, Tensor], meta: dict) -> None:  # noqa: B027
        """Restore what :meth:`_state_tensors` saved (nothing by default)."""

    def _settings(self) -> dict:
        """Constructor settings to save (subclasses add theirs)."""
        return {}

    def save(self, path: str | Path) -> None:
        """Save the fitted posterior to ``path`` (safetensors with a JSON header; no pickle).

        The file holds the linearisation point (every parameter and buffer the network used), the
        samples and hyperparameters, so that :meth:`load` with the same architecture predicts
        identically.
        """
        self._check_fitted()
        selection = self.linearisation.selection
        tensors = {f"state.{name}": t for name, t in self.linearisation.snapshot().items()}
        tensors.update(samples=self._samples, prior_precision=self.prior.precision)
        if self.scale is not None:
            tensors["scale"] = self.scale
        if selection.indices is not None:
            tensors["selection_indices"] = selection.indices
        tensors.update(self._state_tensors())
        meta = {
            "kind": "posterior",
            "class": type(self).__name__,
            "model": persistence.model_signature(self.linearisation.snapshot()),
            "likelihood": self.likelihood.name,
            "sigma_noise": float(self.sigma_noise),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "g_prior": self.g_prior,
            "tangent_batching": self.linearisation.tangent_batching,
            "selection": [
                [n, list(s)] for n, s in zip(selection.names, selection.shapes, strict=True)
            ],
            "em_history": self.em_history,
            **self._settings(),
        }
        persistence.write(path, tensors, meta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: nn.Module,
        progress: bool | None = None,
        strict: bool = False,
    ) -> BaseLaplace:
        """Load a posterior saved by :meth:`save` onto ``model`` (the same architecture).

        Every tensor is checked against its checksum and for finite values, and every metadata field
        for its type and range; a damaged or edited file raises a ``ValueError`` naming what is
        wrong. Predictions use the file's linearisation point ``θ*``, not ``model``'s weights: if
        those differ, a ``UserWarning`` names the tensor with the largest difference, or, with
        ``strict=True``, a ``ValueError`` is raised.
        """
        tensors, meta = persistence.read(path)
        if meta.get("kind") == "em-checkpoint":
            raise ValueError(
                f"{path} is an EM checkpoint (written by `optimize_prior_precision(checkpoint=...)`),"
                " not a saved posterior. To resume that EM run, pass it as `checkpoint=` to "
                "`optimize_prior_precision` again; to write a loadable posterior, call "
                "`.save(path)` after fitting."
            )
        kind, held = meta.get("kind"), meta.get("class")
        if kind != "posterior" or not isinstance(held, str):
            raise ValueError(
                f"{path} holds {kind!r}, not a saved posterior; pass a file written by `.save(path)`."
            )
        if held != cls.__name__:
            raise ValueError(
                f"{path} holds a {held}, not a {cls.__name__}; load it with lla.{held}.load."
            )
        persistence.check_fields(
            meta,
            {
                "model": persistence.SIGNATURE,
                "likelihood": frozenset({"classification", "regression"}),
                "sigma_noise": float,
                "n_samples": int,
                "seed": int,
                "g_prior": bool,
                "tangent_batching": frozenset(BATCHINGS),
                "selection": persistence.SIGNATURE,
                "em_history": list,
            },
            path,
        )
        current = dict(model.named_parameters())
        current.update(dict(model.named_buffers()))
        persistence.check_signature(meta["model"], persistence.model_signature(current), path)
        state = {name: tensors[f"state.{name}"] for name, _ in meta["model"]}
        differs = persistence.largest_difference(state, current)
        if differs is not None:
            text = (
                f"The model's weights differ from the linearisation point θ* saved in {path} "
                f"(largest |difference| {differs[1]:.3g}, in {differs[0]!r}); predictions use the "
                "file's weights."
            )
            if strict:
                raise ValueError(
                    f"{text} Load onto the network it was fitted on, or pass strict=False."
                )
            warnings.warn(
                f"{text} Load onto the network it was fitted on, or pass strict=True to raise.",
                UserWarning,
                stacklevel=2,
            )
        selection = ParameterSelection(
            tuple(n for n, _ in meta["selection"]),
            tuple(torch.Size(s) for _, s in meta["selection"]),
            tensors.get("selection_indices"),
        )
        try:
            la = cls(
                model,
                meta["likelihood"],
                prior_precision=tensors["prior_precision"],
                sigma_noise=meta["sigma_noise"],
                n_samples=meta["n_samples"],
                seed=meta["seed"],
                parameters=selection,
                g_prior=meta["g_prior"],
                tangent_batching=meta["tangent_batching"],
                progress=progress,
                **cls._settings_from(meta, path),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} holds settings that cannot be built: {err}") from err
        lin = la.linearisation
        lin.restore(state)
        la.scale = tensors.get("scale")
        la.em_history = meta["em_history"]
        la._samples = tensors["samples"].to(lin.device)
        la._restore(tensors, meta)
        return la

    @classmethod
    def _settings_from(cls, meta: dict, path: str | Path) -> dict:
        """Constructor keywords from saved settings, checked (subclasses override)."""
        return {}


def solver_settings(solver: object) -> dict:
    """A JSON-friendly description of a solver configuration."""
    fields = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(solver).items()}
    return {"name": type(solver).__name__, **fields}
