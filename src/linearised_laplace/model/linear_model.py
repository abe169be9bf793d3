r"""The conjugate Gaussian linear model that linearised Laplace reduces a network to.

Features ``Φ`` (stacked ``Φ(x_i)`` ``[C, D]`` over the training points), curvature
``B = blockdiag(B_i)`` from the likelihood at the offset outputs ``f_0(x_i)``, and prior
``θ ~ N(0, A^{-1})``. The posterior precision is

$$ H = A + M, \qquad M = Φ^\top B Φ = \sum_i Φ(x_i)^\top B_i Φ(x_i) \quad \text{(the GGN)}. $$

Every product here is matrix-free; :meth:`LinearGaussianModel.dense_ggn` is the dense twin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from ..core.checks import check_finite, check_sample_budget
from ..core.kronecker import KroneckerGGN
from ..core.linalg import add_gram, symmetrise_upper
from ..core.memory import gib
from ..core.progress import progress_bar
from ..network import inputs as trees
from ..network.features import FeatureOperator, MatrixFeatures
from ..network.inputs import Inputs
from .data import Data
from .likelihoods import Gaussian, Likelihood
from .precision import PosteriorPrecision
from .priors import Prior


@dataclass(frozen=True)
class LinearGaussianModel:
    """Features, likelihood curvature, prior and training data of a linear-Gaussian model.

    Attributes:
        features: The feature operator ``x ↦ (f_0(x), Φ(x))``.
        likelihood: Gives ``B_i`` and its factor ``L_i`` at ``f_0(x_i)``.
        prior: The prior precision ``A``.
        data: The training inputs (targets are used only by checks and, later, the mean).
        kronecker: A KFAC approximation of ``M`` for the preconditioner, if one was built.
    """

    features: FeatureOperator
    likelihood: Likelihood
    prior: Prior
    data: Data
    kronecker: KroneckerGGN | None = None

    @property
    def n_params(self) -> int:
        """``D``."""
        return self.features.n_params

    @cached_property
    def n_outputs(self) -> int:
        """``C``, read off the offset at the first training input."""
        return self.features.forward(self.data.subset(torch.arange(1))[0]).shape[-1]

    def with_prior(self, prior: Prior) -> LinearGaussianModel:
        """The same model under another prior."""
        return replace(self, prior=prior)

    def at(self, precision: Tensor, sigma: float) -> tuple[LinearGaussianModel, float]:
        """This model at prior precision ``precision`` and Gaussian noise ``sigma``, and ``σ/σ_new``.

        ``B ∝ σ⁻²``, so ``Φᵀ L ν`` scales by the returned ratio and ``M`` by its square (1: unchanged).
        """
        model = replace(self, prior=self.prior.with_precision(precision))
        if not isinstance(self.likelihood, Gaussian) or sigma == self.likelihood.sigma:
            return model, 1.0
        ratio = self.likelihood.sigma / sigma
        kronecker = None if self.kronecker is None else self.kronecker.scaled(ratio**2)
        return replace(model, likelihood=Gaussian(sigma), kronecker=kronecker), ratio

    @cached_property
    def precision(self) -> PosteriorPrecision:
        """``H = A + M`` at this model's prior and noise (built once per model)."""
        features = self.features
        return PosteriorPrecision(
            self.prior, self.ggn_products, features.dtype, features.device, self.kronecker
        )

    def check_batch(self, x: Inputs, y: Tensor, f0: Tensor) -> None:
        """Validate one training batch against the model's outputs ``f0``."""
        if trees.batch_size(x) == 0:  # a rank's empty share of a small last batch
            return
        for leaf in trees.leaves(x):
            check_finite("The training inputs", leaf)
        check_finite("The training targets", y)
        self.likelihood.check_targets(f0, y.to(f0.device))

    def ggn_vec(
        self, x: Tensor, tangents: Tensor, at: Callable[[Tensor, Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``f_0(x)`` and ``Φ(x)ᵀ B Φ(x) z_k`` on a batch for ``[K, D]`` tangents.

        ``B`` is evaluated at ``at(x, f_0(x))`` if given, else at the offset ``f_0(x)``.
        """
        f0, jz = self.features.jvp(x, tangents)
        _, pull = self.features.pullback(x)
        return f0, pull(self.likelihood.hessian_vec(f0 if at is None else at(x, f0), jz))

    def ggn_products(self, tangents: Tensor) -> Tensor:
        """``M z_k`` over the whole training set: ``[K, D]``."""
        ggn_z = torch.zeros_like(tangents)
        for _, x, _ in self.data.batches():
            ggn_z += self.ggn_vec(x, tangents)[1]
        return self.data.all_reduce(ggn_z)

    def function_norms(self, tangents: Tensor) -> Tensor:
        """``‖Φ z_k‖²_B = Σ_i (Φ_i z_k)ᵀ B_i (Φ_i z_k)`` over the training set: ``[K]``."""
        total = tangents.new_zeros(tangents.shape[0])
        for _, x, _ in self.data.batches():
            f0, jz = self.features.jvp(x, tangents)
            total = total + (jz * self.likelihood.hessian_vec(f0, jz)).sum((-2, -1))
        return self.data.all_reduce(total)

    @property
    def features_gib(self) -> float:
        """The size of the training features ``Φ`` ``[n, C, D]`` in GiB."""
        return gib(len(self.data) * self.n_outputs * self.n_params, self.features.dtype)

    @property
    def batch_jacobian_gib(self) -> float:
        """The size of one training batch's Jacobian ``[b, C, D]`` in GiB."""
        batch = min(self.data.batch_size, len(self.data))
        return gib(batch * self.n_outputs * self.n_params, self.features.dtype)

    def with_dense_features(
        self, limit_gib: float = math.inf, progress: bool | None = False
    ) -> LinearGaussianModel:
        """This model with ``Φ`` ``[n, C, D]`` built once and held, its data indexed by point.

        Building ``Φ`` costs about ``C/2`` JVP + VJP passes (per-example reverse mode); each later
        data pass (a solver's step or iteration, the mean, the evidence) is then a matrix product
        instead of a JVP and a VJP through the network. The data indices, and so the per-point
        noise, and the data's fingerprint are kept.
        Returns ``self`` when ``Φ`` would exceed ``limit_gib`` or the data are split over ranks.
        ``progress``: as the methods' ``progress`` (one step per batch).
        """
        n, c, d = len(self.data), self.n_outputs, self.n_params
        dtype, device = self.features.dtype, self.features.device
        if self.data.shard.world > 1 or self.features_gib > limit_gib:
            return self
        jacobian = torch.empty(n, c, d, dtype=dtype, device=device)
        offset = torch.empty(n, c, dtype=dtype, device=device)
        targets = []
        batches = self.data.batches()
        bar = progress_bar(batches, enabled=progress, desc="features", total=self.data.n_batches)
        for idx, x, y in bar:
            offset[idx] = self.features.forward(x)
            self.check_batch(x, y, offset[idx])
            jacobian[idx] = self.features.to_dense(x)
            targets.append(y)
        data = self.data.indexed(torch.cat(targets))
        return replace(self, features=MatrixFeatures(jacobian, offset=offset), data=data)

    def dense_ggn(self) -> Tensor:
        """``M = Σ_i Φ(x_i)ᵀ B_i Φ(x_i)`` as a dense float64 ``[D, D]`` matrix."""
        d = self.n_params
        check_sample_budget(
            d * d,
            f"A dense {d}×{d} GGN",
            "Use SampledLaplace (matrix-free) or linearise fewer parameters (`parameters=`).",
        )
        ggn = torch.zeros(d, d, dtype=torch.float64, device=self.features.device)
        buffer = None
        for _, x, _ in self.data.batches():
            jac = self.features.to_dense(x)  # [b, C, D]
            factor = self.likelihood.factor(self.features.forward(x).to(torch.float64))  # B = LLᵀ
            rows = torch.bmm(factor.transpose(1, 2).to(jac.dtype), jac)  # Lᵀ J: M = Σ (LᵀJ)ᵀ LᵀJ
            buffer = add_gram(ggn, rows.flatten(0, 1), buffer)
        return self.data.all_reduce(symmetrise_upper(ggn))
