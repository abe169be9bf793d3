r"""The dense posterior ``N(0, H^{-1})``, ``H = M + A``, held as the Cholesky factor ``R`` of ``H``.

``O(n C P²)`` to assemble, ``O(P³)`` to factorise, ``O(P²)`` memory over ``P`` coordinates; EM is
exact MacKay EM, and the evidence and a validation grid search refactorise ``H`` per value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..core import persistence
from ..core.checks import check_sample_budget
from ..core.distributed import is_main_process
from ..core.linalg import CholeskyPreconditioner, cholesky
from ..core.memory import gib
from ..core.seeds import derive_seed
from ..metrics import grid_scores
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource, PosteriorNoise, draw_posterior_noise
from ..solvers.cholesky import exact_samples
from ..solvers.covariance import PrimalCovariance
from ..solvers.mean import MeanMode, log_likelihood, posterior_mean, solve_mean
from ..solvers.newton import Newton
from ..solvers.sgd import SGD
from .expectation import EStep, Expectation, Iterate, MeanSolve
from .gamma import eigen_gamma, exact_gamma


def check_dense(dim: int, what: str) -> None:
    """Raise before any work if two dense ``dim × dim`` matrices exceed the memory budget."""
    check_sample_budget(
        2 * dim * dim,
        f"{what} over {dim} parameters (two dense {dim}×{dim} matrices)",
        "Use SampledLaplace, or linearise fewer parameters (e.g. parameters='last_layer').",
    )


def _scaled(ggn: Tensor, ratio: float) -> Tensor:
    """``M`` at a new noise (``ratio²`` ``M``), without a ``D × D`` copy when unchanged."""
    return ggn if ratio == 1 else ggn * ratio**2


def log_evidence(
    model: LinearGaussianModel,
    ggn: Tensor,
    mode: MeanMode,
    anchor: Tensor,
    seed: int,
    solve: MeanSolve,
) -> Tensor:
    r"""Laplace evidence ``Σ_i log p(y_i | g_i(θ̄)) − ½ θ̄ᵀAθ̄ − ½ log|H| + ½ log|A|`` (float64).

    ``ggn``: the dense ``M`` of ``model``; ``θ̄`` by ``solve``.
    """
    prior = model.precision.prior64
    factor = cholesky(model.precision.dense(ggn))
    init = anchor.clone() if mode is MeanMode.AFFINE else torch.zeros_like(anchor)
    preconditioner = CholeskyPreconditioner(factor)
    theta, _ = posterior_mean(model, mode, anchor, lambda p: solve(p, init, preconditioner, seed))
    fit = log_likelihood(model, mode, anchor, theta)
    theta = theta.double()
    return torch.tensor(
        fit
        - 0.5 * float((prior * theta * theta).sum())
        - float(factor.diagonal().log().sum())
        + 0.5 * float(prior.log().sum()),
        dtype=torch.float64,
    )


def exact_e_step(
    model: LinearGaussianModel,
    ggn: Tensor,
    eigenvalues: Tensor | None,
    mode: MeanMode,
    anchor: Tensor,
    seed: int,
    solve: MeanSolve,
) -> Callable[[Iterate], EStep]:
    """The exact E-step on the dense GGN ``ggn`` of ``model``: ``θ̄`` by ``solve``, exact ``γ``.

    ``γ`` comes from ``M``'s ``eigenvalues`` if given (an isotropic prior), else from ``H^{-1}``.
    The mean's Newton systems are preconditioned by ``H`` itself (its Cholesky factor at the
    step's hyperparameters; the curvature at ``θ̄`` differs from ``M``'s only through ``B``).
    """

    def step(state: Iterate) -> EStep:
        current, ratio = model.at(state.precision, state.sigma)
        prior = current.precision.prior64
        solves_mean = mode is not MeanMode.NETWORK
        factor = None
        if eigenvalues is None or solves_mean:
            factor = cholesky(current.precision.dense(_scaled(ggn, ratio)))
        if eigenvalues is None:
            covariance_diag = PrimalCovariance(factor).diagonal()
            gamma = exact_gamma(covariance_diag, prior, model.prior.groups, len(state.precision))
        else:  # the GGN scales by ratio², so its eigenvalues do
            gamma = eigen_gamma(eigenvalues * ratio**2, prior[0])
        preconditioner = None if factor is None else CholeskyPreconditioner(factor)
        step_seed = derive_seed(seed, "em", state.step)
        mean, residual = posterior_mean(
            current, mode, anchor, lambda p: solve(p, state.mean, preconditioner, step_seed)
        )
        return EStep(mean, gamma, None, residual)

    return step


GGN_KIND = "dense-ggn"


def ggn_key(model) -> dict:
    """What fixes a linear model's GGN: its data, likelihood and features (those of its first batch).

    The first batch's features ``Φ`` (in the posterior's coordinates) change with the network's
    weights, the linearised parameters and the coordinates (g-prior scale, basis).
    """
    _, x, _ = next(iter(model.data.batches()))
    first = model.features.to_dense(x)
    return {
        "data": model.data.fingerprint(),
        "likelihood": repr(model.likelihood),
        "features": persistence.digest({"first batch": first}),
    }


def read_ggn(path: Path, key: dict) -> dict[str, Tensor]:
    """The tensors cached in ``path`` for ``key`` (``{}`` if none, or another model's)."""
    if not path.exists():
        return {}
    try:
        tensors, meta = persistence.read(path)
    except ValueError:  # damaged or foreign: rebuilt and overwritten
        return {}
    return dict(tensors) if meta.get("kind") == GGN_KIND and meta.get("key") == key else {}


class DensePosterior:
    """Exact samples, (co)variances, EM and evidence from ``R``.

    Args:
        mean_solver: For the linear model's mean (default ``Newton(rtol=1e-10)``, or ``SGD``).
        ggn_cache: A file that keeps ``M`` (and, after EM, its eigenvalues) between runs: read
            when it holds this model's (same data, likelihood and features), else built and
            written. For a large ``D``, where building ``M`` is most of the work.

    Attributes:
        model, ggn: The linear model of the last fit and its GGN ``M`` (``None`` after a load).
        factor: ``R`` ``[P, P]`` (float64); ``samples``: ``[S, P]``.
        noise: The samples' noise, reused by a refit at new hyperparameters (``None`` after a load).
    """

    def __init__(
        self, mean_solver: Newton | SGD | None = None, ggn_cache: str | Path | None = None
    ):
        self.mean_solver = Newton(rtol=1e-10) if mean_solver is None else mean_solver
        self.ggn_cache = None if ggn_cache is None else persistence.check_writable(ggn_cache)
        self.forget()

    def forget(self) -> None:  # noqa: D102
        self.model = self.ggn = self.factor = self.samples = self.noise = None

    def fit(
        self,
        model,
        n_samples: int,
        seed: int,
        progress,
        ggn: Tensor | None = None,
        noise: PosteriorNoise | None = None,
    ) -> None:
        """Factorise ``H`` (``ggn``: ``M``, if already built) and draw ``n_samples`` samples.

        ``noise``: the samples' noise for ``model``'s data and noise level, if already drawn (it
        must be ``seed``'s); else one data pass draws it.
        """
        self.model, self.ggn = model, self.dense_ggn(model)[0] if ggn is None else ggn
        if noise is None:
            noise = draw_posterior_noise(model, n_samples, NoiseSource(seed), progress)
        self.noise = noise
        self.factor, self.samples = exact_samples(model, self.ggn, noise)

    def _held_noise(self, n_samples: int, seed: int, ratio: float = 1.0) -> PosteriorNoise | None:
        """The last fit's noise at a new noise level (``ratio``), if it is ``seed``'s ``n_samples``."""
        held = self.noise
        if held is None or held.source.seed != seed or held.n_samples != n_samples:
            return None
        return held.scaled(ratio)

    def memory_needs(self, model, n_samples: int) -> dict[str, float]:
        """GiB of what a fit holds: ``M`` and its factor, one batch's Jacobian, the samples."""
        d = model.n_params
        return {
            "one batch's Jacobian": model.batch_jacobian_gib,
            "dense GGN and its Cholesky factor": gib(2 * d * d, torch.float64),
            "samples": gib(n_samples * d, torch.float64),
        }

    def dense_ggn(self, model, eigenvalues: bool = False) -> tuple[Tensor, Tensor | None]:
        """``M`` of ``model`` and, if asked, its eigenvalues (clamped at 0), from the cache if set."""
        if self.ggn_cache is None:
            ggn = model.dense_ggn()
            return ggn, torch.linalg.eigvalsh(ggn).clamp_min(0) if eigenvalues else None
        key = ggn_key(model)
        cached = read_ggn(self.ggn_cache, key)
        if "ggn" not in cached:  # written at once: the eigenvalues can take as long again
            cached = {"ggn": model.dense_ggn()}
            self._write_cache(cached, key)
        if eigenvalues and "eigenvalues" not in cached:
            cached["eigenvalues"] = torch.linalg.eigvalsh(cached["ggn"]).clamp_min(0)
            self._write_cache(cached, key)
        device = model.features.device
        values = cached["eigenvalues"].to(device) if eigenvalues else None
        return cached["ggn"].to(device), values

    def _write_cache(self, tensors: dict[str, Tensor], key: dict) -> None:
        if is_main_process():
            persistence.write(self.ggn_cache, tensors, {"kind": GGN_KIND, "key": key})

    def at(self, precision: Tensor, sigma: float, seed: int, progress) -> bool:
        """Refactorise ``H`` at new hyperparameters from the held ``M`` (``∝ σ⁻²``); False after a load."""
        if self.model is None:
            return False
        current, ratio = self.model.at(precision, sigma)
        count = len(self.samples)
        noise = self._held_noise(count, seed, ratio)
        self.fit(current, count, seed, progress, _scaled(self.ggn, ratio), noise)
        return True

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

    def functional_factor(self, features, x: Tensor) -> Tensor:
        """``J(x) R^{-1}`` ``[N, C, P]`` (float64): its Gram is ``J(x) H^{-1} J(x)ᵀ``, exactly."""
        return PrimalCovariance(self.factor).functional_factor(features.to_dense(x))

    def solver_of_mean(self, progress):
        """``(problem, init, preconditioner, seed) ↦ θ̄`` by the mean solver."""
        return lambda p, init, pre, seed: solve_mean(
            p, self.mean_solver, init, pre, seed, progress
        ).samples[0]

    def expectation(self, model, mode, anchor: Tensor, seed: int, progress) -> Expectation:
        """Exact MacKay EM (:func:`exact_e_step`), refit at the end."""
        ggn, eigenvalues = self.dense_ggn(model, eigenvalues=model.prior.is_isotropic)

        def refit(state, n_samples: int) -> None:
            current, ratio = model.at(state.precision, state.sigma)
            self.fit(current, n_samples, seed, progress, _scaled(ggn, ratio))

        solve = self.solver_of_mean(progress)
        step = exact_e_step(model, ggn, eigenvalues, mode, anchor, seed, solve)
        return Expectation(step, refit, estimated=False)

    def grid_search(self, features, x, grid: Tensor, score, seed: int, progress):
        """:func:`~linearised_laplace.metrics.grid_scores` of the fitted GGN; refits at the best.

        Returns the scores and the index of the best (the lowest; the first of equals).
        """
        scores = grid_scores(self.ggn, features.to_dense(x).double(), grid, score)
        index = int(torch.tensor(scores).argmin())
        best = self.model.prior.with_precision(grid[index])
        count = len(self.samples)
        noise = self._held_noise(count, seed)
        self.fit(self.model.with_prior(best), count, seed, progress, self.ggn, noise)
        return scores, index

    def log_evidence(self, precision: Tensor, sigma: float, mode, anchor, seed: int, progress):
        """:func:`log_evidence` of the fit at these hyperparameters."""
        current, ratio = self.model.at(precision, sigma)
        return log_evidence(
            current, _scaled(self.ggn, ratio), mode, anchor, seed, self.solver_of_mean(progress)
        )

    def wants_kronecker(self, model) -> bool:
        """False: the factorisation needs no preconditioner."""
        return False

    def check_parallel(self) -> None:
        """A dense posterior shards over ranks like any data pass."""

    def settings(self) -> dict:
        """Saved settings: none (the mean solver is not saved)."""
        return {}

    def tensors(self) -> dict[str, Tensor]:  # noqa: D102
        return {"factor": self.factor}

    def restore(self, tensors: dict[str, Tensor], device) -> None:
        """Restore a saved fit (without its training data)."""
        self.factor, self.samples = tensors["factor"], tensors["samples"].to(device)
