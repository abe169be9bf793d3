r"""Choosing a subnetwork for subnetwork linearised Laplace (Daxberger et al., ICML 2021).

The posterior is kept exact (full covariance) over ``S`` chosen weights and the rest stay at their
trained values. Strategies rank weights and keep the top ``S``:

* ``"swag"``: largest marginal variance under a diagonal SWAG fit (the paper's choice) — the
  variance of the weights along a constant-step SGD trajectory started at ``θ*``;
* ``"diagonal_laplace"``: largest marginal variance ``1 / (M_jj + α)`` under a diagonal Laplace
  approximation;
* ``"magnitude"``: largest ``|θ*_j|``; ``"random"``: a seeded random choice.

Weights without curvature (``M_jj ≈ 0``: dead units, inputs that are always zero) are never chosen:
they cannot change the predictive on the training distribution, and ranking by diagonal-Laplace
variance would otherwise pick them first (as laplace-torch 0.3's does, which can leave the
subnetwork model no different from the plain network; ``benchmarks/results/siblings.md`` counts
them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.checks import check_positive_int
from ..core.progress import progress_bar
from ..core.seeds import seeded_generator
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource
from ..network.parameters import select_parameters
from ..solvers.sgd import estimate_top_curvature
from .g_prior import ggn_diagonal

RANKED = ("swag", "diagonal_laplace", "magnitude", "random")
ZERO_CURVATURE = 1e-8  # relative to the mean GGN diagonal


def swag_variance(
    model: LinearGaussianModel,
    *,
    n_epochs: int = 10,
    lr: float = 0.5,
    seed: int = 0,
    progress: bool | None = None,
) -> Tensor:
    r"""Diagonal SWAG variance ``E[θ²] − E[θ]²`` over a constant-step SGD run from ``θ*``: ``[D]``.

    SGD with Nesterov momentum on ``Σ_i −log p(y_i | f(x_i; θ)) + ½ θᵀAθ`` (the network itself, not
    linearised, in evaluation mode on a private copy of the weights), with the step ``lr / λ̂`` set by
    the top minibatch curvature as in sample-then-optimise. Moments are collected four times per
    epoch.

    Args:
        model: The linear-Gaussian model over a :class:`~linearised_laplace.Linearisation`.
        n_epochs: Epochs of SGD.
        lr: Dimensionless step.
        seed: Seeds the batch order and the curvature estimate.
        progress: Show a progress bar.
    """
    lin, likelihood, data = model.features, model.likelihood, model.data
    generator = seeded_generator(seed, "swag")
    curvature = estimate_top_curvature(model, data.batch_size, 20, generator)
    prior_diag = model.precision.prior
    theta = lin.theta_star.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([theta], lr=lr / curvature, momentum=0.9, nesterov=True)
    steps_per_epoch = data.n_batches
    every = max(1, steps_per_epoch // 4)
    first = torch.zeros_like(theta, dtype=torch.float64)
    second = torch.zeros_like(first)
    count, step = 0, 0
    with progress_bar(total=n_epochs * steps_per_epoch, enabled=progress, desc="SWAG") as bar:
        for _ in range(n_epochs):
            for size, (_, x, y) in data.sharded_batches(data.random_order(generator)):
                nll = -likelihood.log_prob(lin.evaluate(x, theta), y.to(lin.device)).sum()
                (grad,) = torch.autograd.grad(nll * (len(data) / size), theta)
                theta.grad = data.all_reduce(grad) + prior_diag * theta.detach()
                optimiser.step()
                step += 1
                if step % every == 0:
                    value = theta.detach().double()
                    first += value
                    second += value.square()
                    count += 1
                bar.update()
    mean = first / max(count, 1)
    return (second / max(count, 1) - mean.square()).clamp_min(0.0)


def rank_weights(
    strategy: str,
    model: LinearGaussianModel,
    ggn_diagonal: Tensor,
    *,
    seed: int = 0,
    swag_epochs: int = 10,
    progress: bool | None = None,
) -> Tensor:
    """Scores ``[D]`` of every weight under ``strategy`` (higher is kept first).

    Args:
        strategy: One of ``"swag"``, ``"diagonal_laplace"``, ``"magnitude"``, ``"random"``.
        model: The linear-Gaussian model over all candidate weights (a ``Linearisation``).
        ggn_diagonal: ``[D]`` diagonal of the GGN.
        seed: Seeds the random and SWAG strategies.
        swag_epochs: Epochs of the SWAG run.
        progress: Show a progress bar.
    """
    if strategy == "magnitude":
        return model.features.theta_star.abs().double()
    if strategy == "random":
        gen = seeded_generator(seed, "subnetwork")
        return torch.rand(model.n_params, generator=gen, dtype=torch.float64)
    if strategy == "diagonal_laplace":
        return 1.0 / (ggn_diagonal.double() + model.precision.prior.double())
    if strategy == "swag":
        return swag_variance(model, n_epochs=swag_epochs, seed=seed, progress=progress)
    raise ValueError(f"Unknown subnetwork strategy {strategy!r}; choose one of {RANKED}.")


def select_top(scores: Tensor, ggn_diagonal: Tensor, n_params: int) -> Tensor:
    """Indices (sorted) of the ``n_params`` best-scoring weights with non-zero curvature."""
    alive = ggn_diagonal > ZERO_CURVATURE * ggn_diagonal.mean()
    n_alive = int(alive.sum())
    if n_alive < n_params:
        raise ValueError(
            f"Only {n_alive} of {ggn_diagonal.numel()} weights have non-zero curvature on the "
            f"training data, fewer than n_params = {n_params}. Lower `n_params`."
        )
    masked = torch.where(alive, scores.double(), -torch.inf)
    return masked.topk(n_params).indices.sort().values


def check_subnetwork(
    model: nn.Module, subnetwork: object, n_params: int | None, exclude_norm: bool = False
) -> bool:
    """Validate a subnetwork choice and its size; returns whether it is a ranking strategy."""
    ranked = isinstance(subnetwork, str) and subnetwork in RANKED
    if isinstance(subnetwork, str) and not ranked and subnetwork != "last_layer":
        valid = ", ".join(repr(s) for s in (*RANKED, "last_layer"))
        raise ValueError(
            f"`subnetwork` must be one of {valid} or a tensor of indices, got {subnetwork!r}."
        )
    if not ranked:
        if n_params is not None:
            raise ValueError("`n_params` applies to ranking strategies only; leave it None here.")
        return False
    total = select_parameters(model, "all", exclude_norm=exclude_norm).n_params
    if n_params is None:
        raise ValueError(
            f"subnetwork={subnetwork!r} needs `n_params`, the subnetwork size (1 … {total})."
        )
    check_positive_int("n_params", n_params)
    if n_params > total:
        raise ValueError(
            f"`n_params` = {n_params} exceeds the model's {total} trainable parameters."
        )
    return True


@dataclass(frozen=True)
class Ranking:
    """A subnetwork of ``size`` weights to choose by ``strategy`` from the training data."""

    strategy: str
    size: int
    swag_epochs: int = 10
    exclude_norm: bool = False


def choose_subnetwork(
    model: LinearGaussianModel, ranking: Ranking, seed: int = 0, progress: bool | None = None
) -> Tensor:
    """Indices (sorted) of the subnetwork ``ranking`` chooses on ``model`` (all candidates)."""
    diagonal = ggn_diagonal(model, NoiseSource(seed, stream="subnetwork"), progress=progress)
    scores = rank_weights(
        ranking.strategy,
        model,
        diagonal,
        seed=seed,
        swag_epochs=ranking.swag_epochs,
        progress=progress,
    )
    return select_top(scores, diagonal, ranking.size)
