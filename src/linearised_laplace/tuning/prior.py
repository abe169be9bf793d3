r"""Choosing the prior precision: MacKay EM on the training data, or a grid on held-out data.

:class:`PriorTuning` gives :class:`~linearised_laplace.Laplace` its ``optimize_prior_precision``
(EM, :func:`~linearised_laplace.tuning.em.run_em`, with the backend's E-step, or laplace-torch's
``gridsearch``) and ``select_prior_precision`` (a validation grid scored by the backend). Both end
with the posterior refitted at the chosen value, written through the ``prior_precision`` and
``sigma_noise`` setters.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..core import persistence
from ..core.checks import check_finite, check_positive, check_positive_int
from ..core.progress import progress_note
from ..core.timing import timed
from ..metrics import linearised_joint_nll, linearised_nll
from ..model.data import Data, TrainingData
from ..model.likelihoods import Gaussian
from ..posteriors.expectation import EStep
from ..solvers.mean import MeanMode, mean_mode
from .checkpoint import run_fingerprint
from .em import check_em_settings, run_em
from .mackay import sketch_start
from .state import EMState

PRIOR_METHODS = ("em", "gridsearch")
EM_STARTS = ("auto", "current")
NOISE_GAP = 4.0
"""How far (a factor in variance) the predictive variance may fall below the validation mean
squared residual before EM's σ draws a warning."""


def scaled_gamma(step: Callable[[EMState], EStep], scale: float) -> Callable[[EMState], EStep]:
    """``step`` with ``γ`` times ``scale``: EM on a pilot of ``scale`` of the data, in full units.

    On a pilot of ``m`` of ``n`` points at ``α m/n`` (or the g-prior's ``α``), ``γ`` and ``θ̄``
    are the full data's at ``α``, so MacKay's update ``(m/n) γ / ‖θ̄‖²`` (and the noise update)
    follow the full run's (:mod:`~linearised_laplace.methods.plan`).
    """

    def run(state: EMState) -> EStep:
        result = step(state)
        return dataclasses.replace(result, gamma=result.gamma * scale)

    return run


class PriorTuning:
    """EM and grid search of the prior precision (a mixin of :class:`~linearised_laplace.Laplace`)."""

    _gamma_scale = 1.0
    """``m/n`` while a cost plan's pilot runs EM on ``m`` of ``n`` points (:func:`scaled_gamma`)."""

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
        x, y, f = self._validation(val_loader)
        if objective == "joint" and kappa > len(y):
            raise ValueError(
                f"`kappa` ({kappa}) exceeds the {len(y)} validation points; pass a smaller kappa."
            )
        features = self.coordinates.transform(self.linearisation)
        f0 = f.to(torch.float64)  # the features' offset is the network's output
        sigma = self.likelihood.sigma if isinstance(self.likelihood, Gaussian) else None

        def score(half: Tensor) -> float:
            if objective == "nll":
                return linearised_nll(f0, half, y, sigma)
            return linearised_joint_nll(f0, half, y, kappa, seed=self.seed)

        scores, index = fit.grid_search(features, x, grid, score, self.seed, self.progress)
        best = float(grid[index])
        self.prior_precision = best
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
        mean: str = "auto",
        start: Literal["auto", "current"] = "auto",
        update_sigma: bool | None = None,
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
            tol: Stop when the estimated distance to the fixed point in every ``log α`` (and in
                ``log σ``) falls below this (see :func:`~linearised_laplace.tuning.em.run_em`).
            method: ``"em"`` (default) or ``"gridsearch"``.
            val_loader: Validation data, as for :meth:`fit`: required by ``"gridsearch"``; with
                EM and ``update_sigma=True``, the learnt ``σ`` is checked against it, with a
                warning when the predictive variance ``σ² + Var f`` is more than
                :data:`NOISE_GAP` times below the validation mean squared residual.
            grid: Candidate precisions for ``"gridsearch"`` (see :meth:`select_prior_precision`).
            mean: ``"auto"`` (default: ``"network"``; ``"tangent"`` for a classifier with ``g_prior=True``;
                chosen on held-out data in
                ``benchmarks/results/prior_rules-*.md`` for classifiers and
                ``benchmarks/results/regression_priors.md`` for regression), ``"network"`` (use
                ``θ*``, as laplace-torch's marglik does: no mean solve), ``"tangent"`` (the
                linear model's mode with outputs ``J w``, the seed paper's) or ``"affine"``
                (outputs ``f(x; θ*) + J(w − θ*)``).
            start: Where EM starts. ``"auto"``: where the posterior holds a sketch of the GGN (a
                sampler preconditioned by Nyström), at MacKay's fixed point in its eigenspace,
                with EM's mean ``θ*`` completed by the GGN's diagonal, which puts it at or above
                EM's fixed point (:func:`~linearised_laplace.tuning.mackay.sketch_start`: no
                data pass), else at ``prior_precision``;
                ``"current"``: at ``prior_precision``.
            update_sigma: Also learn the Gaussian noise ``σ`` by MacKay's update (``None``, the
                default: for regression yes, starting from ``sigma_noise``; pass ``False`` to keep
                a known ``σ``).
            checkpoint: File to save the state to after every step; a run restarted with the same
                arguments resumes from it.
            **options: A sampled posterior's ``gamma`` estimator: ``"auto"`` (default:
                ``"function"``, pooled where the solve is dual and the prior one group with the
                dual space's ``n·C − (1/K) Σ_k ‖w_k‖²``, whose error shrinks as ``γ → n·C`` on an
                overfit network; see :mod:`~linearised_laplace.posteriors.gamma`), ``"function"``
                (``(1/K) Σ_k ‖Jζ_k‖²_B``) or ``"weight"``, ``n_em_samples``: ``K`` per E-step
                (default 8; the final draw uses ``n_samples``), and ``em_rtol``: the relative
                residual at which an iterative solver stops in the E-steps (default ``1e-3``; the
                final samples keep the solver's own, ``1e-4`` for CG in float32; see
                :func:`~linearised_laplace.posteriors.sampled.em_solver`). Where its solve is dense
                (Cholesky), ``γ`` is exact and ``gamma`` does not apply.

        Returns:
            EM: the history, one dict per step (step 0 is the start): ``prior_precision``,
            ``gamma``, ``mean_norm_sq``, ``sigma_noise``, ``seconds``, ``cpu_seconds``, also
            kept as ``em_history`` (see :class:`~linearised_laplace.tuning.state.EMState`);
            ``em_costs`` holds the wall and CPU seconds of each stage: ``"set-up"`` (the
            features, noise and preconditioner), ``"EM"`` and ``"final samples"``. Grid search:
            the dict of :meth:`select_prior_precision`.
        """
        if method not in PRIOR_METHODS:
            raise ValueError(f"`method` must be one of {PRIOR_METHODS}, got {method!r}.")
        if method == "gridsearch":
            if val_loader is None:
                raise ValueError(
                    "method='gridsearch' scores each α on validation data: pass "
                    "`val_loader=(x_val, y_val)` (or a DataLoader)."
                )
            em_only = {"update_sigma": bool(update_sigma), "checkpoint": checkpoint}
            unused = [name for name, value in em_only.items() if value] + list(options)
            if unused:
                raise ValueError(f"{unused} apply to method='em' only, not to 'gridsearch'.")
            return self.fit(train_loader).select_prior_precision(val_loader, grid)
        gaussian = isinstance(self.likelihood, Gaussian)
        update_sigma = gaussian if update_sigma is None else bool(update_sigma)
        if grid is not None or (val_loader is not None and not update_sigma):
            raise ValueError(
                "`grid` and `val_loader` are for method='gridsearch'; EM learns α from the "
                "training data alone (with update_sigma=True, `val_loader` checks the learnt σ)."
            )
        validation = None if val_loader is None else self._validation(val_loader)
        if self.prior.is_diagonal:
            raise ValueError(
                "EM does not learn a per-weight [D] prior precision: MacKay's update "
                "α_d = γ_d / θ̄_d² rests on one weight each and is unstable (a weight near 0 sends "
                "its α to infinity). Start from one value or one per parameter tensor, or use "
                "method='gridsearch'."
            )
        check_em_settings(max_iter, tol)
        self._check_em_options(options)
        if update_sigma and not gaussian:
            raise ValueError("`update_sigma=True` needs a regression (Gaussian) likelihood.")
        if checkpoint is not None:
            persistence.check_writable(checkpoint, "checkpoint")
        mode = mean_mode(mean, self.likelihood, self.g_prior)
        if start not in EM_STARTS:
            raise ValueError(f"`start` must be one of {EM_STARTS}, got {start!r}.")
        costs: dict[str, dict[str, float]] = {}
        with timed(costs, "set-up"):
            model = self._fit_model(train_loader)
            anchor = self.coordinates.anchor()
            em = self.posterior.expectation(
                model, mode, anchor, self.seed, self.progress, **options
            )
        settings = {"class": type(self).__name__, "seed": self.seed, "g_prior": self.g_prior}
        settings.update(mean=mode.value, **em.settings)
        initial = self.prior.precision.clone()
        if start == "auto" and em.sketch is not None:
            network_mean = mode is MeanMode.NETWORK
            estimate = sketch_start(
                em.sketch.values,
                em.sketch.vectors,
                anchor,
                network_mean,
                gamma_scale=self._gamma_scale,
                ggn_diag=em.ggn_diag,
            )
            if estimate is not None:
                initial = torch.full_like(initial, estimate)
                where = f"the GGN's rank-{em.sketch.rank} sketch"
                if network_mean and em.ggn_diag is not None:
                    where += " and its diagonal"
                progress_note(
                    f"EM starts at α = {estimate:.4g}, MacKay's fixed point in {where} "
                    "(start='current' starts at prior_precision)",
                    enabled=self.progress,
                )
        mean_start = anchor.clone() if mode is MeanMode.AFFINE else torch.zeros_like(anchor)
        with timed(costs, "EM"):
            state = run_em(
                em.step if self._gamma_scale == 1 else scaled_gamma(em.step, self._gamma_scale),
                EMState(0, initial, float(self.sigma_noise), mean_start),
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
        with timed(costs, "final samples"):
            em.refit(state, self.n_samples)
        self.em_costs = costs
        # α and σ together (the setter validates α against the coordinates' groups)
        learnt = dataclasses.replace(self.hyperparameters, precision=state.precision)
        self.hyperparameters = learnt.with_sigma(state.sigma)
        self.em_history = state.history
        if validation is not None:
            self._check_noise(*validation)
        return self.em_history

    def _validation(self, val_loader: TrainingData) -> tuple[Tensor, Tensor, Tensor]:
        """Validation inputs, targets and the network's outputs ``f(x; θ*)``, checked."""
        val = Data(val_loader)
        x, y = val.subset(torch.arange(len(val)))
        x = self.linearisation.check_inputs(x, "the val_loader's inputs")
        check_finite("The val_loader targets", y)
        try:
            f = self.linearisation.forward(x)
            self.likelihood.check_targets(f, y.to(f.device))
        except (TypeError, ValueError) as err:
            raise type(err)(f"The val_loader targets do not fit the model: {err}") from err
        return x, y, f

    def _check_noise(self, x: Tensor, y: Tensor, f: Tensor) -> None:
        """Warn when the predictive variance is far below the validation residuals' square."""
        mean = f.double()
        residual = float((y.reshape(mean.shape).double() - mean).square().mean())
        sigma = float(self.sigma_noise)
        predictive = sigma**2 + float(self._marginal_variance(x).double().mean())
        if predictive < residual / NOISE_GAP:
            warnings.warn(
                f"EM learnt σ = {sigma:.3g}, and the predictive variance σ² + Var f = "
                f"{predictive:.3g} is {residual / predictive:.0f}× below the validation mean "
                f"squared residual {residual:.3g}: the network fits its training data far more "
                "closely than new data (it overfits), so its predictive is overconfident. Fix σ "
                f"near the validation residuals (sigma_noise={residual**0.5:.3g}, "
                "update_sigma=False), or choose α on validation data (method='gridsearch').",
                UserWarning,
                stacklevel=3,
            )

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
                f"not use: its E-step {takes}. `gamma`, `n_em_samples` and `em_rtol` are options of "
                "SampledLaplace's sample-based EM; remove them here."
            )
