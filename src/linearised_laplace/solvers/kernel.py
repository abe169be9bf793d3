r"""The dual (observation) space of the linear model: ``Lᵀ Φ A^{-1} Φᵀ L``, the scaled kernel.

``L`` factors the likelihood curvature (``B = L Lᵀ``), so the dual system of a posterior sample is
``(I + Lᵀ Φ A^{-1} Φᵀ L) w = b`` over the ``n·C`` observations (Wilson et al., 2020; Lin et al.,
2023). These maps serve the dual solvers (:mod:`~linearised_laplace.solvers.dual`,
:mod:`~linearised_laplace.solvers.sdd`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.checks import check_sample_budget
from ..core.lowrank import Preconditioner, nystrom
from ..core.seeds import seeded_generator
from ..model.linear_model import LinearGaussianModel
from ..model.noise import NoiseSource
from .preconditioner import worth_growing


def observations(model: LinearGaussianModel) -> int:
    """``n·C``, the number of observations."""
    return len(model.data) * model.n_outputs


def dual_rhs(model: LinearGaussianModel, theta0: Tensor, source: NoiseSource) -> Tensor:
    """``b = Lᵀ Φ θ_0 − ν``: ``[K, n·C]`` (one JVP pass; validates every batch)."""
    features, likelihood, data = model.features, model.likelihood, model.data
    out = theta0.new_empty(theta0.shape[0], len(data), model.n_outputs)
    kw = {"dtype": features.dtype, "device": features.device}
    for idx, x, y in data.batches():
        f0, jt = features.jvp(x, theta0)
        model.check_batch(x, y, f0)
        nu = source.points(idx, theta0.shape[0], f0.shape[-1], **kw)
        out[:, idx] = likelihood.factor_t_vec(f0, jt) - nu
    return out.reshape(theta0.shape[0], -1)


def dual_pullback(model: LinearGaussianModel, w: Tensor) -> Tensor:
    """``Φᵀ L w`` for ``w`` ``[K, n·C]``: ``[K, D]`` (one VJP pass)."""
    w = w.reshape(w.shape[0], len(model.data), model.n_outputs)
    total = w.new_zeros(w.shape[0], model.n_params)
    for idx, x, _ in model.data.batches():
        f0, pull = model.features.pullback(x)
        total += pull(model.likelihood.factor_vec(f0, w[:, idx]))
    return total


def kernel_vec(model: LinearGaussianModel, w: Tensor) -> Tensor:
    """``Lᵀ Φ A^{-1} Φᵀ L w``: ``[K, n·C]`` (one VJP pass, one JVP pass)."""
    t = dual_pullback(model, w) / model.precision.prior
    out = torch.empty_like(w).reshape(w.shape[0], len(model.data), model.n_outputs)
    for idx, x, _ in model.data.batches():
        f0, jt = model.features.jvp(x, t)
        out[:, idx] = model.likelihood.factor_t_vec(f0, jt)
    return out.reshape(w.shape[0], -1)


def dual_rows(model: LinearGaussianModel) -> Tensor:
    """``Lᵀ Φ`` as a dense float64 ``[nC, D]`` matrix (small problems)."""
    n_obs = observations(model)
    check_sample_budget(
        n_obs * (n_obs + model.n_params),
        f"A dense dual system over {n_obs} observations",
        "Use CG (solver=lla.CG(...)) for the dual.",
    )
    blocks = []
    for _, x, _ in model.data.batches():
        jac = model.features.to_dense(x).to(torch.float64)  # [b, C, D]
        factor = model.likelihood.factor(model.features.forward(x).to(torch.float64))  # [b, C, C]
        blocks.append((factor.transpose(1, 2) @ jac).flatten(0, 1))
    return torch.cat(blocks)


def dual_matrix(model: LinearGaussianModel, rows: Tensor | None = None) -> Tensor:
    """``I + Lᵀ Φ A^{-1} Φᵀ L`` as a dense float64 ``[nC, nC]`` matrix (``rows``: ``Lᵀ Φ``, if built)."""
    rows = dual_rows(model) if rows is None else rows
    prior = model.precision.prior64
    return torch.eye(len(rows), dtype=torch.float64, device=rows.device) + (rows / prior) @ rows.T


def kernel_preconditioner(
    model: LinearGaussianModel, rank: int, seed: int = 0, max_rank: int | None = None
) -> Preconditioner:
    """``P = I + U Λ Uᵀ`` from a rank-``rank`` Nyström approximation of ``LᵀKL``.

    With ``max_rank`` the sketch doubles its rank while
    :func:`~linearised_laplace.solvers.preconditioner.worth_growing`.
    """
    sketch = nystrom(
        lambda w: kernel_vec(model, w),
        observations(model),
        rank,
        generator=seeded_generator(seed, "dual-preconditioner"),
        dtype=model.features.dtype,
        device=model.features.device,
        max_rank=max_rank,
        grow=worth_growing,
    )
    ones = torch.ones(observations(model), dtype=model.features.dtype, device=model.features.device)
    return Preconditioner(ones, sketch.vectors, sketch.values)
