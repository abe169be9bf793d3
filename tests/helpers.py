"""Linear-Gaussian test problems built from explicit matrices, and their dense oracles."""

from __future__ import annotations

import torch

from linearised_laplace import (
    Categorical,
    Data,
    Gaussian,
    LinearGaussianModel,
    MatrixFeatures,
    make_prior,
)


def matrix_model(
    n: int = 30,
    c: int = 3,
    d: int = 8,
    alpha: float | list[float] = 2.0,
    likelihood: str = "classification",
    batch_size: int = 7,
    seed: int = 0,
) -> LinearGaussianModel:
    """``Φ`` ``[n, c, d]`` with random offsets (so that softmax curvatures differ per point)."""
    gen = torch.Generator().manual_seed(seed)
    phi = torch.randn(n, c, d, generator=gen)
    offset = 2.0 * torch.randn(n, c, generator=gen)
    if likelihood == "classification":
        lik, y = Categorical(), torch.randint(0, c, (n,), generator=gen)
    else:
        lik, y = Gaussian(0.7), torch.randn(n, c, generator=gen)
    groups = torch.arange(d) * 2 // d  # two groups, for layerwise priors
    prior = make_prior(alpha, groups, ["first", "second"])
    return LinearGaussianModel(
        MatrixFeatures(phi, offset=offset), lik, prior, Data((torch.arange(n), y), batch_size)
    )


def dense_parts(model: LinearGaussianModel):
    """``Φ`` ``[n, c, d]``, ``B_i``, ``L_i`` and ``H`` of a matrix model."""
    idx = torch.arange(len(model.data))
    phi = model.features.to_dense(idx)
    f0 = model.features.forward(idx)
    hess, factor = model.likelihood.hessian(f0), model.likelihood.factor(f0)
    precision = torch.einsum("ncd,nce,nef->df", phi, hess, phi) + torch.diag(model.precision.prior)
    return phi, hess, factor, precision


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
