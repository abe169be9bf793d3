r"""Likelihoods and their curvature at the network's outputs.

For outputs ``f`` of shape ``[N, C]`` each likelihood gives the per-point loss Hessian
$B_i = \nabla^2_f[-\log p(y_i \mid f_i)]$ (which does not depend on $y_i$ for these families), a
factor $L_i$ with $L_i L_i^\top = B_i$, and products with both in $O(C)$ per point. All curvature is
evaluated at the network's own outputs $f(x_i; \theta^*)$.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..core.checks import check_positive


class Likelihood(ABC):
    """Interface of a likelihood ``p(y | f)`` with ``f`` of shape ``[N, C]``.

    Products broadcast over leading axes: ``v`` may be ``[..., N, C]``.
    """

    name: ClassVar[str]

    @abstractmethod
    def hessian_vec(self, f: Tensor, v: Tensor) -> Tensor:
        """``B_i v_i`` for every point: ``[..., N, C]``."""

    @abstractmethod
    def factor_vec(self, f: Tensor, v: Tensor) -> Tensor:
        """``L_i v_i``: ``[..., N, C]``."""

    @abstractmethod
    def factor_t_vec(self, f: Tensor, v: Tensor) -> Tensor:
        """``L_i^T v_i``: ``[..., N, C]``."""

    @abstractmethod
    def noise_target(self, f: Tensor, nu: Tensor) -> Tensor:
        r"""``ε_i = B_i^+ L_i ν_i``, the target noise of the naive objective (``B ε = L ν``)."""

    @abstractmethod
    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:
        """``log p(y_i | f_i)``: ``[..., N]`` for ``f`` of shape ``[..., N, C]``."""

    @abstractmethod
    def nll_grad(self, f: Tensor, y: Tensor) -> Tensor:
        """``∂[−log p(y_i | f_i)]/∂f_i``: ``[..., N, C]``."""

    @abstractmethod
    def check_targets(self, f: Tensor, y: Tensor) -> None:
        """Raise a clear error if targets ``y`` do not fit outputs ``f`` ``[N, C]``."""

    def kfac_loss(self) -> tuple[nn.Module, float] | None:
        """A summed torch loss whose GGN is ``M / factor``, and ``factor`` (``None``: none is)."""
        return None

    def hessian(self, f: Tensor) -> Tensor:
        """Dense ``B_i``: ``[N, C, C]`` (for tests and small problems)."""
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        return self.hessian_vec(f, eye[:, None, :].expand(-1, f.shape[0], -1)).permute(1, 2, 0)

    def factor(self, f: Tensor) -> Tensor:
        """Dense ``L_i``: ``[N, C, C]`` (for tests and small problems)."""
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        return self.factor_vec(f, eye[:, None, :].expand(-1, f.shape[0], -1)).permute(1, 2, 0)


@dataclass(frozen=True)
class Gaussian(Likelihood):
    r"""Homoscedastic Gaussian ``y ~ N(f, σ² I_C)``: ``B_i = σ^{-2} I``, ``L_i = σ^{-1} I``.

    Args:
        sigma: Noise standard deviation ``σ > 0``.
    """

    sigma: float = 1.0
    name: ClassVar[str] = "regression"

    def __post_init__(self):
        object.__setattr__(self, "sigma", float(check_positive("sigma_noise", self.sigma)))

    def hessian_vec(self, f: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        return v / self.sigma**2

    def factor_vec(self, f: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        return v / self.sigma

    def factor_t_vec(self, f: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        return v / self.sigma

    def noise_target(self, f: Tensor, nu: Tensor) -> Tensor:  # noqa: D102
        return nu * self.sigma

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        y = y.reshape(f.shape[-2:]).to(f.dtype)
        sq = ((y - f) ** 2).sum(-1)
        return -0.5 * sq / self.sigma**2 - f.shape[-1] * (
            math.log(self.sigma) + 0.5 * math.log(2 * math.pi)
        )

    def nll_grad(self, f: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return (f - y.reshape(f.shape[-2:]).to(f.dtype)) / self.sigma**2

    def kfac_loss(self) -> tuple[nn.Module, float]:
        """``Σ ‖f − y‖²``, whose curvature ``2 I`` is ``2σ²`` times ``B``."""
        return nn.MSELoss(reduction="sum"), 1 / (2 * self.sigma**2)

    def check_targets(self, f: Tensor, y: Tensor) -> None:  # noqa: D102
        n, c = f.shape
        if not y.is_floating_point():
            raise TypeError(
                f"Regression targets must be floating point, got dtype {y.dtype}. Use y.float()."
            )
        if not (y.shape == (n, c) or (c == 1 and y.shape == (n,))):
            raise ValueError(
                f"Regression targets must have shape [N, C] = [{n}, {c}] to match the model's "
                f"outputs{' (or [N])' if c == 1 else ''}, got {list(y.shape)}."
            )


@dataclass(frozen=True)
class Categorical(Likelihood):
    r"""Softmax-categorical likelihood over ``C`` classes, with ``p = softmax(f)``.

    ``B_i = diag(p) − p pᵀ`` (singular: its null vector is ``1``) and the closed-form factor
    ``L_i = diag(√p) − p √pᵀ``, for which ``L_i L_iᵀ = B_i`` because ``Σ_c p_c = 1``.
    """

    name: ClassVar[str] = "classification"

    def kfac_loss(self) -> tuple[nn.Module, float]:
        """Summed cross-entropy: its curvature is ``B``."""
        return nn.CrossEntropyLoss(reduction="sum"), 1.0

    def hessian_vec(self, f: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        p = torch.softmax(f, dim=-1)
        return p * v - p * (p * v).sum(-1, keepdim=True)

    def factor_vec(self, f: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        p = torch.softmax(f, dim=-1)
        sqrt_p = p.sqrt()
        return sqrt_p * v - p * (sqrt_p * v).sum(-1, keepdim=True)

    def factor_t_vec(self, f: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        p = torch.softmax(f, dim=-1)
        sqrt_p = p.sqrt()
        return sqrt_p * v - sqrt_p * (p * v).sum(-1, keepdim=True)

    def noise_target(self, f: Tensor, nu: Tensor) -> Tensor:
        r"""``B^+ L ν``: since ``Σ(Lν) = 0``, ``ε = Lν / p`` solves ``Bε = Lν``; project out ``1``.

        Its entries scale as ``1/√p_c``: large for confident predictions. This is the variance that
        the low-variance objective avoids.
        """
        p = torch.softmax(f, dim=-1)
        eps = self.factor_vec(f, nu) / p
        return eps - eps.mean(-1, keepdim=True)

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        logp = torch.log_softmax(f, dim=-1)
        index = y.long().reshape(-1, 1).expand(*f.shape[:-1], 1)
        return logp.gather(-1, index).squeeze(-1)

    def nll_grad(self, f: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        onehot = torch.nn.functional.one_hot(y.long(), f.shape[-1]).to(f.dtype)
        return torch.softmax(f, dim=-1) - onehot

    def check_targets(self, f: Tensor, y: Tensor) -> None:  # noqa: D102
        n, c = f.shape
        if c < 2:
            raise ValueError(
                f"Classification needs a model with C >= 2 outputs (one logit per class), got C = "
                f"{c}. For a single output use likelihood='regression', or output two logits."
            )
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(
                f"Classification targets must be integer class labels, got dtype {y.dtype}. "
                "Pass y.long() (not one-hot vectors or probabilities)."
            )
        if y.shape != (n,):
            raise ValueError(
                f"Classification targets must have shape [N] = [{n}] (one label per input), "
                f"got {list(y.shape)}."
            )
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= c:
            raise ValueError(
                f"Class labels must lie in [0, {c}) for a model with {c} outputs, got labels in "
                f"[{low}, {high}]."
            )


def as_sigma_noise(value: float | Tensor) -> float:
    """``σ`` from a positive number or a one-element tensor (0-d or ``[1]``), as laplace-torch takes it.

    Raises ``ValueError`` otherwise (a string too, as laplace-torch does).
    """
    try:
        sigma = check_positive("sigma_noise", value)
    except TypeError as err:
        raise ValueError(str(err)) from err
    if sigma.numel() != 1 or getattr(value, "ndim", 0) > 1:
        raise ValueError(
            "`sigma_noise` must be one value (only homoscedastic noise is supported): a number, a "
            f"0-d tensor or a tensor of shape [1]; got shape {list(torch.as_tensor(value).shape)}."
        )
    return float(sigma)


def with_noise(likelihood: Likelihood, sigma: float) -> Likelihood:
    """``likelihood`` at noise ``σ``: a Gaussian's ``σ`` replaced; any other only at ``σ = 1``."""
    if isinstance(likelihood, Gaussian):
        return Gaussian(sigma)
    if sigma != 1.0:
        raise ValueError(
            f"`sigma_noise` applies to regression only; got sigma_noise={sigma:g} with a "
            f"{likelihood.name} likelihood. Leave it at 1.0."
        )
    return likelihood


def make_likelihood(likelihood: str | Likelihood, sigma_noise: float | Tensor = 1.0) -> Likelihood:
    """Build a likelihood from ``"classification"``, ``"regression"`` or an instance.

    A Gaussian instance keeps its own ``σ``; ``sigma_noise`` as in :func:`as_sigma_noise`.
    """
    sigma = as_sigma_noise(sigma_noise)
    if likelihood == "classification":
        likelihood = Categorical()
    if isinstance(likelihood, Gaussian):
        return likelihood
    if isinstance(likelihood, Likelihood):
        return with_noise(likelihood, sigma)
    if likelihood == "regression":
        return Gaussian(sigma)
    raise ValueError(
        f"`likelihood` must be 'classification', 'regression' or a Likelihood instance, "
        f"got {likelihood!r}."
    )
