"""Reproducible standard-normal noise for sample-then-optimise.

Every draw is a pure function of ``(seed, stream, sample index, data index)``: sample ``k`` of a run
with 64 samples equals sample ``k`` of a run with 8, and the noise of data point ``i`` does not depend
on the batch size, the data order or how the data are sharded across processes. Draws are made in
float64 on the CPU, then cast, so float32 and float64 runs see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.progress import progress_bar
from ..core.seeds import seeded_generator

if TYPE_CHECKING:
    from ..core.lowrank import LowRank
    from .linear_model import LinearGaussianModel


class NoiseSource:
    """Counter-based standard-normal draws keyed by a seed.

    Args:
        seed: The seed of every draw.
        chunk: Data points per generator call; a performance knob that does not change statistics
            but does change the numbers, so it is fixed per source.
        stream: Name of the per-point stream; sources with different streams are independent.
    """

    def __init__(self, seed: int, chunk: int = 256, stream: str = "points"):
        self.seed = int(seed)
        self.chunk = chunk
        self.stream = stream

    def prior(
        self, n_samples: int, n_params: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> Tensor:
        """Draw ``ξ ~ N(0, I_D)`` for each sample: ``[K, D]``."""
        rows = [
            torch.randn(
                n_params, generator=seeded_generator(self.seed, "prior", k), dtype=torch.float64
            )
            for k in range(n_samples)
        ]
        return torch.stack(rows).to(dtype=dtype, device=device)

    def points(
        self,
        indices: Tensor,
        n_samples: int,
        n_outputs: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> Tensor:
        """Draw ``ν_{i,k} ~ N(0, I_C)`` for data points ``indices`` ``[b]``: ``[K, b, C]``."""
        indices = indices.reshape(-1).long().cpu()
        blocks = indices // self.chunk
        out = torch.empty(n_samples, indices.numel(), n_outputs, dtype=torch.float64)
        for block in torch.unique(blocks).tolist():
            mask = blocks == block
            offsets = indices[mask] - block * self.chunk
            for k in range(n_samples):
                gen = seeded_generator(self.seed, self.stream, k, block)
                draws = torch.randn(self.chunk, n_outputs, generator=gen, dtype=torch.float64)
                out[k, mask] = draws[offsets]
        return out.to(dtype=dtype, device=device)


@dataclass(frozen=True)
class PosteriorNoise:
    r"""The randomness behind ``K`` zero-mean posterior samples.

    Sample ``k`` is ``ζ_k = H^{-1}(A θ_{0,k} + Φᵀ L ν_k) ~ N(0, H^{-1})`` with ``θ_{0,k} = A^{-1/2} ξ_k``
    and ``ν_{i,k} ~ N(0, I_C)`` per data point. Only ``ξ`` and ``u_k = Φᵀ L ν_k`` are stored; a change
    of ``A`` rescales them (``θⁿ(A) = A^{-1/2} ξ + A^{-1} u``) instead of drawing new noise.

    Attributes:
        xi: ``[K, D]`` standard-normal prior draws ``ξ``.
        u: ``[K, D]`` data draws ``Σ_i Φ(x_i)ᵀ L_i ν_{i,k}`` (covariance ``M``).
        source: Regenerates the per-point ``ν`` (the naive objective needs them).
        ggn_diag: ``[D]`` Hutchinson estimate of ``diag(M)``, ``mean_p u_p²`` over the samples' ``u``
            and extra probes from the same pass (``E[u uᵀ] = M``); SGD preconditions with it.
        ggn_low_rank: A Nyström approximation of ``M`` for the solvers' preconditioner, attached
            by :func:`~linearised_laplace.solvers.preconditioner.with_ggn_sketch` (``None``: none).
    """

    xi: Tensor
    u: Tensor
    source: NoiseSource
    ggn_diag: Tensor
    ggn_low_rank: LowRank | None = None

    @property
    def n_samples(self) -> int:
        """``K``."""
        return self.xi.shape[0]

    def scaled(self, ratio: float) -> PosteriorNoise:
        """The noise when ``L`` scales by ``ratio`` (a new Gaussian σ): ``u`` by it, ``M`` by its square."""
        if ratio == 1.0:
            return self
        low_rank = None if self.ggn_low_rank is None else self.ggn_low_rank.scaled(ratio**2)
        return replace(
            self, u=self.u * ratio, ggn_diag=self.ggn_diag * ratio**2, ggn_low_rank=low_rank
        )

    def theta0(self, prior_diag: Tensor) -> Tensor:
        """Prior draws ``θ_0 = A^{-1/2} ξ``: ``[K, D]``."""
        return self.xi / prior_diag.sqrt()

    def theta_n(self, prior_diag: Tensor) -> Tensor:
        """Regulariser centres of the low-variance objective ``θⁿ = θ_0 + A^{-1} u``: ``[K, D]``."""
        return self.theta0(prior_diag) + self.u / prior_diag

    def rhs(self, prior_diag: Tensor) -> Tensor:
        """Right-hand sides ``A θ_0 + u = A θⁿ`` of ``H ζ = A θⁿ``: ``[K, D]``."""
        return self.xi * prior_diag.sqrt() + self.u


def draw_posterior_noise(
    model: LinearGaussianModel,
    n_samples: int,
    source: NoiseSource,
    progress: bool | None = None,
    n_probes: int = 32,
) -> PosteriorNoise:
    """One fixed-order pass over the training data: ``u_k = Σ_i Φ(x_i)ᵀ L_i ν_{i,k}``.

    Each batch is validated (finite inputs and targets, targets that fit the outputs) as it passes.

    Args:
        model: The linear-Gaussian model.
        n_samples: ``K``.
        source: The noise source.
        progress: Show a progress bar (None: only on a terminal).
        n_probes: At least this many Hutchinson probes (the ``K`` samples' ``u`` and extra ones
            from the same pass) estimate ``diag(M)``.

    Returns:
        The noise of ``K`` posterior samples.
    """
    features, data = model.features, model.data
    kw = {"dtype": features.dtype, "device": features.device}
    xi = source.prior(n_samples, features.n_params, **kw)
    extra = NoiseSource(source.seed, source.chunk, stream="probe")
    n_extra = max(0, n_probes - n_samples)
    u = xi.new_zeros(n_samples + n_extra, features.n_params)
    for idx, x, y in progress_bar(
        data.batches(), enabled=progress, total=data.n_batches, desc="noise"
    ):
        f0, pull = features.pullback(x)
        model.check_batch(x, y, f0)
        nu = source.points(idx, n_samples, f0.shape[-1], **kw)
        if n_extra:
            nu = torch.cat([nu, extra.points(idx, n_extra, f0.shape[-1], **kw)])
        u += pull(model.likelihood.factor_vec(f0, nu))
    u = data.all_reduce(u)
    return PosteriorNoise(xi, u[:n_samples], source, (u**2).mean(0))
