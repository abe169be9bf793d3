"""Posterior backends, dense and sampled, behind one interface (:class:`Posterior`)."""

from typing import Protocol, runtime_checkable

from torch import Tensor

from .dense import DensePosterior
from .expectation import Expectation
from .sampled import SampledPosterior


@runtime_checkable
class Posterior(Protocol):
    """What :class:`~linearised_laplace.methods.base.Laplace` asks of a backend.

    ``samples`` ``[S, P]`` are in the coordinates' frame (``None`` until fitted); ``model`` is the
    linear model of the last fit (``None`` after a load).
    """

    samples: Tensor | None
    model: object | None

    def fit(self, model, n_samples: int, seed: int, progress) -> None:
        """Infer the posterior of the linear model ``model`` and draw ``n_samples``."""

    def expectation(self, model, mode, anchor, seed, progress, **options) -> Expectation:
        """The E-step (and the refit at the end) of EM on ``model``."""

    def functional_factor(self, features, x: Tensor) -> Tensor:
        """``G`` ``[N, C, R]`` with ``G_a G_bᵀ = J(x_a) Σ J(x_b)ᵀ`` for ``features`` ``J``."""

    def grid_search(
        self, features, x, grid: Tensor, score, seed: int, progress
    ) -> tuple[list[float], int]:
        """``score`` of ``J(x) ζ``'s factor per isotropic precision in ``grid``; refit at the best.

        Returns the scores and the index of the best (the lowest; the first of equals).
        """

    def extra_samples(self, count: int, seed: int) -> Tensor:
        """``count`` samples beyond the stored ones (or raise)."""

    def at(self, precision: Tensor, sigma: float, seed: int, progress) -> bool:
        """Refit at prior precision ``precision`` and noise ``sigma`` without the data if it can."""

    def forget(self) -> None:
        """Drop the fit (the weights changed)."""

    def memory_needs(self, model, n_samples: int) -> dict[str, float]:
        """GiB of each tensor a fit of ``model`` with ``n_samples`` holds, by name."""

    def wants_kronecker(self, model) -> bool:
        """Whether its solver on ``model`` preconditions with KFAC (the fit then builds it)."""

    def check_parallel(self) -> None:
        """Raise if the backend cannot run sharded over ``torch.distributed`` ranks."""

    def settings(self) -> dict:
        """The configuration a saved file records (JSON)."""

    def tensors(self) -> dict[str, Tensor]:
        """The fitted tensors a saved file holds besides ``samples``."""

    def restore(self, tensors: dict[str, Tensor], device) -> None:
        """Restore a fit from a saved file's ``tensors``."""


__all__ = ["DensePosterior", "Posterior", "SampledPosterior"]
