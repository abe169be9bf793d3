r"""Kronecker-factored (KFAC) blocks of a GGN, and the preconditioner they give ``H = A + M``.

A layer ``y = W a + b`` with ``W`` ``[out, in]`` (a convolution's patches flattened to ``in``) has
the GGN block ``M_{[W b]} ≈ G ⊗ Ā`` (Martens & Grosse, 2015): ``G = Σ_i g_i g_iᵀ`` over the
curvature's square-root columns backpropagated to ``y``, ``Ā`` the second moment of the inputs
``[a, 1]``. On ``V = [W b]`` ``[out, in + 1]`` it acts as ``V ↦ G V Ā``; the flat coordinates hold
``W`` row-major, then ``b``. A weight or a bias alone is a block of its own (a bias: ``G``). With the eigenpairs
``G = Q_G Λ_G Q_Gᵀ`` and ``Ā = Q_A Λ_A Q_Aᵀ``, a damped block is inverted exactly:

$$ (G ⊗ Ā + δ I)^{-1} V = Q_G \big[(Q_G^\top V Q_A) ⊘ (λ_G λ_A^\top + δ)\big] Q_A^\top. $$

In scaled coordinates ``z = θ / s`` (the g-prior) the block is ``S (G ⊗ Ā) S``; the preconditioner
then uses ``S (G ⊗ Ā + δ) S`` with ``δ`` the block's mean of ``a_j / s_j²``, the prior in the
weights' own coordinates (exact without a scale: one prior precision per tensor).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class KroneckerBlock:
    """One parameter tensor's block ``G ⊗ Ā`` over the flat coordinates ``[start, stop)``.

    Attributes:
        start, stop: Its coordinates.
        g_values, g_vectors: Eigenpairs of ``G`` ``[out]``, ``[out, out]`` (float64, values ≥ 0).
        a_values, a_vectors: Eigenpairs of ``Ā`` ``[in]``, ``[in, in]``; ``[1]``, ``[[1]]`` for a bias.
        bias: The last column of ``V`` is a bias, stored after the weight.
    """

    start: int
    stop: int
    g_values: Tensor
    g_vectors: Tensor
    a_values: Tensor
    a_vectors: Tensor
    bias: bool = False

    @classmethod
    def of(
        cls, start: int, g: Tensor, a: Tensor | None = None, bias: bool = False
    ) -> KroneckerBlock:
        """The block of factors ``G`` and ``Ā`` (``None``: a bias alone), in float64."""
        g_values, g_vectors = torch.linalg.eigh(0.5 * (g + g.T).double())
        a = torch.ones(1, 1, dtype=torch.float64, device=g.device) if a is None else a
        a_values, a_vectors = torch.linalg.eigh(0.5 * (a + a.T).double())
        size = len(g_values) * len(a_values)
        values = g_values.clamp_min(0), g_vectors, a_values.clamp_min(0), a_vectors
        return cls(start, start + size, *values, bias)

    def matrix(self, v: Tensor) -> Tensor:
        """Flat block coordinates ``[K, out·in']`` to ``V`` ``[K, out, in']`` (float64)."""
        out, width = len(self.g_values), len(self.a_values)
        v = v.double()
        if not self.bias:
            return v.reshape(len(v), out, width)
        weight = v[:, : out * (width - 1)].reshape(len(v), out, width - 1)
        return torch.cat([weight, v[:, out * (width - 1) :, None]], dim=-1)

    def flat(self, m: Tensor) -> Tensor:
        """``V`` ``[K, out, in']`` back to flat block coordinates."""
        if not self.bias:
            return m.flatten(1)
        return torch.cat([m[..., :-1].flatten(1), m[..., -1]], dim=1)

    def eigenvalues(self) -> Tensor:
        """``λ_G λ_Aᵀ`` ``[out, in]``: the block's eigenvalues."""
        return self.g_values[:, None] * self.a_values[None, :]

    def spectral(self, v: Tensor, values: Tensor) -> Tensor:
        """``Q diag(values) Qᵀ v`` row-wise on flat block coordinates ``[K, out·in']``.

        ``values`` ``[out, in']`` in the Kronecker eigenbasis, e.g. ``(λ_G λ_Aᵀ + δ)^p``.
        """
        return self.flat(self.rotate(self.rotate(self.matrix(v)) * values, inverse=True))

    def rotate(self, m: Tensor, inverse: bool = False) -> Tensor:
        """``Q_Gᵀ V Q_A`` (or ``Q_G V Q_Aᵀ`` with ``inverse``) for ``V`` ``[K, out, in']``."""
        if inverse:
            return self.g_vectors @ m @ self.a_vectors.T
        return self.g_vectors.T @ m @ self.a_vectors


@dataclass(frozen=True)
class KroneckerGGN:
    """A GGN's KFAC approximation over ``D`` coordinates: Kronecker blocks, zero elsewhere.

    Attributes:
        blocks: The covered tensors' blocks, disjoint.
        n_params: ``D``.
        uncovered: Names of the parameter tensors it does not cover (their coordinates are not
            in any block).
        scale: ``[D]`` the coordinates' scale ``s`` (``z = θ / s``), or ``None``.
    """

    blocks: tuple[KroneckerBlock, ...]
    n_params: int
    uncovered: tuple[str, ...] = ()
    scale: Tensor | None = None

    def scaled(self, factor: float) -> KroneckerGGN:
        """``factor · M`` (a new Gaussian noise scales ``G``)."""
        if factor == 1.0:
            return self
        blocks = tuple(replace(b, g_values=b.g_values * factor) for b in self.blocks)
        return replace(self, blocks=blocks)

    def in_coordinates(self, scale: Tensor) -> KroneckerGGN:
        """The same GGN in the coordinates ``z = θ / s``: ``S M S``."""
        return replace(self, scale=scale)

    def covered(self) -> Tensor:
        """``[D]`` bool: the coordinates inside a block."""
        mask = torch.zeros(self.n_params, dtype=torch.bool)
        for block in self.blocks:
            mask[block.start : block.stop] = True
        return mask

    def matvec(self, z: Tensor) -> Tensor:
        """``S K S z`` row-wise for ``z`` ``[K, D]`` (zero on uncovered coordinates)."""
        s = 1.0 if self.scale is None else self.scale.double()
        z64 = z.double() * s
        out = torch.zeros_like(z64)
        for b in self.blocks:
            out[:, b.start : b.stop] = b.spectral(z64[:, b.start : b.stop], b.eigenvalues())
        return (out * s).to(z.dtype)


class KroneckerPreconditioner:
    """``P ≈ H = A + M``: KFAC blocks ``S (G ⊗ Ā + δ) S``, Jacobi ``a_j + M̂_jj`` elsewhere.

    The interface of :class:`~linearised_laplace.core.lowrank.Preconditioner`: ``solve`` applies
    ``P^{-1}``, ``half`` a square root ``C`` with ``C Cᵀ = P^{-1}`` and ``half_t`` its transpose.

    Args:
        ggn: The KFAC approximation of ``M``.
        prior: ``[D]`` ``diag(A)`` in the coordinates.
        ggn_diag: ``[D]`` an estimate of ``diag(M)`` for the uncovered coordinates.
    """

    def __init__(self, ggn: KroneckerGGN, prior: Tensor, ggn_diag: Tensor):
        self.ggn, self.dtype = ggn, prior.dtype
        s = torch.ones_like(prior, dtype=torch.float64) if ggn.scale is None else ggn.scale
        self.inv_scale = 1.0 / s.double().to(prior.device)
        weight_prior = prior.double() * self.inv_scale.square()
        self.damping = [float(weight_prior[b.start : b.stop].mean()) for b in ggn.blocks]
        self.diag = (prior + ggn_diag).double()
        self.covered = ggn.covered().to(prior.device)

    def _apply(self, r: Tensor, power: float, before: bool, after: bool) -> Tensor:
        """``S⁻¹ (K + δ)^power S⁻¹`` on blocks (each ``S⁻¹`` optional), ``d^power`` elsewhere."""
        x = r.double()
        out = x * self.diag**power
        if before:
            x = x * self.inv_scale
        for b, delta in zip(self.ggn.blocks, self.damping, strict=True):
            values = (b.eigenvalues() + delta) ** power
            out[:, b.start : b.stop] = b.spectral(x[:, b.start : b.stop], values)
        if after:
            out = torch.where(self.covered, out * self.inv_scale, out)
        return out.to(self.dtype)

    def solve(self, r: Tensor) -> Tensor:
        """``P^{-1} r`` row-wise for ``r`` ``[K, D]``."""
        return self._apply(r, -1.0, before=True, after=True)

    def half(self, w: Tensor) -> Tensor:
        """``C w`` row-wise, ``C = S⁻¹ (K + δ)^{-1/2}`` on blocks (``C Cᵀ = P^{-1}``)."""
        return self._apply(w, -0.5, before=False, after=True)

    def half_t(self, w: Tensor) -> Tensor:
        """``Cᵀ w`` row-wise."""
        return self._apply(w, -0.5, before=True, after=False)
