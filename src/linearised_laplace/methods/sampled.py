r"""Sampled linearised Laplace (Antorán et al., ICLR 2023): posterior samples by sample-then-optimise.

Memory is ``O(S·D)`` and each SGD step costs one JVP and one VJP per sample on a minibatch; no
``D×D`` matrix is ever formed, and the Jacobian only where it fits in ``feature_memory_gib``. The prior precision is learnt by sample-based EM.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from .. import persistence
from .._checks import check_positive_int
from .._progress import progress_note
from ..data import Data
from ..em import EMState, EStep, function_space_gamma, weight_space_gamma
from ..likelihoods import Gaussian
from ..linear_model import LinearGaussianModel
from ..mean import MeanProblem
from ..noise import NoiseSource, PosteriorNoise, draw_posterior_noise
from ..seeds import derive_seed
from ..solvers import CG, SDD, SGD, Cholesky, SolveInfo, Solver, SolveResult
from ..solvers.auto import Choice, choose_solver
from ..solvers.base import check_convergence
from ..solvers.dual import gaussian_mean, solve_dual
from ..solvers.newton import Newton
from ..solvers.preconditioner import LowRank, with_ggn_sketch
from .base import BaseLaplace, TrainingData, solver_settings

SOLVERS = {"SGD": SGD, "CG": CG, "SDD": SDD, "Cholesky": Cholesky, "Newton": Newton}
SPACES = ("auto", "primal", "dual")


class SampledLaplace(BaseLaplace):
    r"""Linearised Laplace with posterior samples drawn by sample-then-optimise.

    ``fit`` draws ``S`` zero-mean samples ``ζ_s ~ N(0, H^{-1})``, ``H = JᵀBJ + A``, each the minimiser
    of a randomised quadratic solved by minibatch SGD using only JVPs and VJPs.
    ``optimize_prior_precision`` learns ``α`` by sample-based EM.

    Args:
        model: Trained network (see :class:`~linearised_laplace.methods.base.BaseLaplace` for the
            shared keywords ``likelihood``, ``prior_precision``, ``sigma_noise``, ``n_samples``,
            ``seed``, ``parameters``, ``exclude_norm``, ``g_prior``, ``tangent_batching``,
            ``feature_memory_gib``, ``progress``).
        likelihood: ``"classification"`` or ``"regression"``.
        solver: For the samples: ``"auto"`` (default; see :func:`~linearised_laplace.solvers.auto.
            choose_solver`: Cholesky where a dense solve is cheap, else preconditioned CG or SGD),
            :class:`~linearised_laplace.solvers.SGD` (primal only),
            :class:`~linearised_laplace.solvers.SDD` (stochastic dual descent; dual only),
            :class:`~linearised_laplace.solvers.CG` or :class:`~linearised_laplace.solvers.Cholesky`.
            ``solve_info`` says which ran and why.
        mean_solver: For the linear model's mean in EM: :class:`~linearised_laplace.solvers.newton.Newton`
            (default; full-batch Newton-CG, one data pass per CG iteration at one vector, precise)
            or :class:`~linearised_laplace.solvers.SGD` (minibatch, as the seed paper).
        space: ``"primal"`` (weight space, ``K × D`` unknowns), ``"dual"`` (observation space,
            ``K × n·C`` unknowns, pathwise conditioning; see :mod:`linearised_laplace.solvers.dual`) or
            ``"auto"`` (default: dual when ``n·C < D``, unless the solver is SGD; always dual for
            SDD). Both give the same samples for the same seed, up to the solver's tolerance.
        strict: Raise :class:`~linearised_laplace.ConvergenceError` when a solve ends above its
            residual tolerance, instead of a :class:`~linearised_laplace.ConvergenceWarning`.
        **kwargs: The shared keywords.

    Attributes:
        solve_info: Diagnostics of the last solve: the solver and space that ran and why, steps,
            each sample's relative residual against the tolerance, time.

    Example:
        >>> import torch, linearised_laplace as lla
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> la = lla.SampledLaplace(net, "classification", n_samples=8, solver=lla.SGD(n_epochs=5))
        >>> la.fit((x, y)).predictive_samples(x[:5]).shape
        torch.Size([8, 5, 3])
    """

    def __init__(
        self,
        model,
        likelihood="classification",
        *,
        solver: Solver | str | None = "auto",
        mean_solver: Newton | SGD | None = None,
        space: str = "auto",
        strict: bool = False,
        **kwargs,
    ):
        super().__init__(model, likelihood, **kwargs)
        if space not in SPACES:
            raise ValueError(f"`space` must be one of {SPACES}, got {space!r}.")
        if solver == "auto":
            solver = None
        if solver is not None and not isinstance(solver, SGD | SDD | CG | Cholesky):
            raise TypeError(
                f"`solver` must be 'auto', lla.SGD(...), lla.SDD(...), lla.CG(...) or "
                f"lla.Cholesky(), got {solver!r}."
            )
        if space == "dual" and isinstance(solver, SGD):
            raise ValueError(
                "The dual space (space='dual') is solved by lla.CG(...), lla.SDD(...) or "
                "lla.Cholesky(), not SGD (its minibatch counterpart there is lla.SDD)."
            )
        if space == "primal" and isinstance(solver, SDD):
            raise ValueError(
                "lla.SDD solves the dual (observation-space) system only; use space='dual' (or "
                "'auto'), or lla.SGD(...) for minibatch solves in the primal space."
            )
        self.solver = solver
        self.space = space
        self.strict = bool(strict)
        self.mean_solver = Newton() if mean_solver is None else mean_solver
        self.solve_info: SolveInfo | None = None

    def _choice(self, model: LinearGaussianModel) -> Choice:
        """The solver and space for ``model`` (``solver="auto"`` and ``space="auto"`` resolved)."""
        return choose_solver(model, self.solver, self.space)

    def _space(self, model: LinearGaussianModel) -> str:
        return self._choice(model).space

    def _check_data_parallel(self, data: Data) -> None:
        if self.space == "dual" or isinstance(self.solver, SDD):
            raise ValueError(
                "The dual space (space='dual', or lla.SDD) keeps one unknown per observation and "
                "is not sharded over ranks; under torch.distributed use space='primal' (or "
                "'auto', which then picks it) with another solver."
            )
        super()._check_data_parallel(data)

    def _solve(
        self, model: LinearGaussianModel, noise: PosteriorNoise, init: Tensor | None, seed: int
    ) -> tuple[SolveResult, Tensor]:
        """Samples in the chosen space, and the warm start for a next solve in that space."""
        choice = self._choice(model)
        progress_note(choice.reason, enabled=self.progress)
        if choice.space == "dual":
            result, warm = solve_dual(
                model,
                noise.xi,
                noise.source,
                choice.solver,
                init=init,
                seed=seed,
                progress=self.progress,
            )
        else:
            result = choice.solver.solve(model, noise, init=init, seed=seed, progress=self.progress)
            warm = result.samples
        info = replace(result.info, reason=choice.reason)
        check_convergence(info, choice.solver.advice, self.strict)
        return replace(result, info=info), warm

    def fit(self, train_loader: TrainingData) -> SampledLaplace:
        """Draw ``n_samples`` posterior samples at the current hyperparameters; returns ``self``.

        Args:
            train_loader: Training data yielding ``(x, y)``: a DataLoader over a map-style dataset,
                or a pair of tensors. Classification ``y`` are integer labels ``[N]``; regression
                ``y`` is ``[N, C]`` (or ``[N]`` when ``C = 1``).
        """
        self._draw(self._fit_model(train_loader))
        return self

    def _noise(
        self, model: LinearGaussianModel, n_samples: int, sketch: LowRank | None = None
    ) -> PosteriorNoise:
        """The noise of ``n_samples`` samples, with the GGN sketch the primal solver will use.

        ``sketch``: one already taken of this model's GGN (it does not depend on the prior).
        """
        noise = draw_posterior_noise(model, n_samples, NoiseSource(self.seed), self.progress)
        choice = self._choice(model)
        if choice.space == "primal" and not isinstance(choice.solver, Cholesky):
            rank = choice.solver.sketch_rank(model)
            noise = with_ggn_sketch(model, replace(noise, ggn_low_rank=sketch), rank, self.seed)
        return noise

    def _draw(
        self,
        model: LinearGaussianModel,
        warm: Tensor | None = None,
        sketch: LowRank | None = None,
    ) -> None:
        noise = self._noise(model, self.n_samples, sketch)
        init = None
        if warm is not None and self._space(model) == "primal":
            # samples share noise by index, so the first rows warm-start exactly
            init = noise.theta0(model.prior_diag()).clone()
            rows = min(len(warm), len(init))
            init[:rows] = warm[:rows]
        result, _ = self._solve(model, noise, init, self.seed)
        self._samples, self.solve_info = result.samples, result.info

    def optimize_prior_precision(
        self,
        train_loader: TrainingData,
        max_iter: int = 10,
        tol: float = 1e-2,
        *,
        mean: str = "tangent",
        gamma: str = "function",
        n_em_samples: int = 8,
        update_sigma: bool = False,
        checkpoint: str | Path | None = None,
    ) -> list[dict]:
        r"""Learn the prior precision by sample-based EM, then draw ``n_samples`` at the result.

        Each step solves for the linear model's mean ``θ̄`` and ``K`` samples (both warm-started,
        the samples' noise kept and rescaled to the new ``α``), estimates the effective dimension
        ``γ̂`` from the samples, and sets ``α_g = γ̂_g / ‖θ̄_g‖²``.

        Args:
            train_loader: Training data, as for :meth:`fit`.
            max_iter: EM steps at most.
            tol: Stop when every ``|Δ log α|`` (and ``|Δ log σ|``) falls below this.
            mean: ``"tangent"`` (the linear model's mode with outputs ``J w``; default),
                ``"affine"`` (outputs ``f(x; θ*) + J(w − θ*)``) or ``"network"`` (use ``θ*``).
            gamma: ``"function"`` (``(1/K) Σ_k ‖Jζ_k‖²_B``; default) or ``"weight"`` estimator.
            n_em_samples: ``K``, samples per E-step (the final draw uses ``n_samples``).
            update_sigma: Also learn the Gaussian noise (regression).
            checkpoint: File to save the state to after every step; a run restarted with the same
                arguments resumes from it.

        Returns:
            The history, one dict per step (step 0 is the start): ``prior_precision``, ``gamma``,
            ``mean_norm_sq``, ``sigma_noise``, ``seconds``. Also kept as ``em_history``.
        """
        mode = self._check_em(max_iter, tol, mean, update_sigma, checkpoint, gamma)
        k = check_positive_int("n_em_samples", n_em_samples)
        model = self._fit_model(train_loader)
        noise = self._noise(model, k)
        sigma_ref = float(self.sigma_noise)
        n_groups = self.prior.precision.numel()

        def e_step(state: EMState) -> EStep:
            current, scaled = self._at(model, noise, state, sigma_ref)
            prior = current.prior_diag()
            step_seed = derive_seed(self.seed, "em", state.step)
            mean_w, residual = self._mean_step(
                current, mode, self.mean_solver, state.mean, scaled.ggn_diag + prior, step_seed
            )
            result, warm = self._solve(current, scaled, state.samples, step_seed)
            if gamma == "function":
                g = function_space_gamma(current, result.samples, n_groups, result.ggn_samples)
            else:
                g = weight_space_gamma(prior, result.samples, self.prior.groups, n_groups)
            return EStep(mean_w, g, warm, residual, positive_gamma=gamma == "function")

        settings = {
            "n_em_samples": k,
            "gamma": gamma,
            "space": self._space(model),
            **self._settings(),
        }
        state = self._em(model, e_step, mode, max_iter, tol, update_sigma, checkpoint, settings)
        final = replace(model, prior=self.prior, likelihood=self.likelihood)
        _, scaled = self._at(model, noise, state, sigma_ref)
        self._draw(final, state.samples, scaled.ggn_low_rank)
        return self.em_history

    def _solve_mean(
        self,
        problem: MeanProblem,
        solver: Newton | SGD,
        init: Tensor,
        preconditioner: Tensor,
        seed: int,
    ) -> Tensor:
        """In the dual with a Gaussian likelihood, ``θ̄`` comes from the dual system (closed form)."""
        model = problem.model
        if self._space(model) != "dual" or not isinstance(model.likelihood, Gaussian):
            return super()._solve_mean(problem, solver, init, preconditioner, seed)
        zero = torch.zeros_like(init)[None]

        def targets(x: Tensor, y: Tensor) -> Tensor:
            g = problem.outputs(x, zero)[0]
            return y.reshape(g.shape).to(g.dtype) - g

        result = gaussian_mean(model, targets, self._choice(model).solver, seed, self.progress)
        check_convergence(result.info, self._choice(model).solver.advice, self.strict)
        return result.samples[0]

    def _at(
        self, model: LinearGaussianModel, noise: PosteriorNoise, state: EMState, sigma_ref: float
    ) -> tuple[LinearGaussianModel, PosteriorNoise]:
        """The model and its noise at the state's hyperparameters (noise rescaled, not redrawn)."""
        current = replace(model, prior=self.prior.with_precision(state.precision))
        if not isinstance(model.likelihood, Gaussian) or state.sigma == sigma_ref:
            return current, noise
        ratio = (
            sigma_ref / state.sigma
        )  # B ∝ σ⁻²: Jᵀ L ν scales by σ_ref/σ, diag(JᵀBJ) by its square
        low_rank = None if noise.ggn_low_rank is None else noise.ggn_low_rank.scaled(ratio**2)
        scaled = replace(
            noise, u=noise.u * ratio, ggn_diag=noise.ggn_diag * ratio**2, ggn_low_rank=low_rank
        )
        return replace(current, likelihood=Gaussian(state.sigma)), scaled

    def functional_variance(self, x: Tensor) -> Tensor:
        r"""Sample estimate ``(1/S) Σ_s (J(x) ζ_s)(J(x) ζ_s)ᵀ`` (the mean is known to be 0): ``[N, C, C]``."""
        self._check_fitted()
        _, jz = self.linearisation.jvp(self.linearisation.check_inputs(x), self.posterior_samples)
        return (jz[..., :, None] * jz[..., None, :]).mean(0)

    def _settings(self) -> dict:
        return {
            "solver": None if self.solver is None else solver_settings(self.solver),
            "mean_solver": solver_settings(self.mean_solver),
            "space": self.space,
            "strict": self.strict,
        }

    @classmethod
    def _settings_from(cls, meta: dict, path: str | Path) -> dict:
        persistence.check_fields(
            meta,
            {
                "solver": (dict, type(None)),
                "mean_solver": dict,
                "space": frozenset(SPACES),
                "strict": bool,
            },
            path,
        )
        solver = meta["solver"]
        if solver is not None:
            solver = persistence.build_config(solver, SOLVERS, "solver", path)
        return {
            "solver": solver,
            "mean_solver": persistence.build_config(
                meta["mean_solver"], {"Newton": Newton, "SGD": SGD}, "mean_solver", path
            ),
            "space": meta["space"],
            "strict": meta["strict"],
        }
