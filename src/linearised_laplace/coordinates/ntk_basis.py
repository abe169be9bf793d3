r"""Nyström approximation of the neural tangent kernel (ELLA; Deng et al., 2022).

On ``M`` training points the NTK Gram matrix ``K_MM = Φ_M Φ_Mᵀ`` (``MC × MC``) has top eigenpairs
``(λ_k, u_k)``; the parameter-space directions ``v_k = Φ_Mᵀ u_k / √λ_k`` are orthonormal, and the
features ``ψ(x) = J(x) V ∈ ℝ^{C×K}`` (``V`` the ``[K, D]`` matrix of the ``v_k``) give the Nyström
kernel ``ψ(x) ψ(x')ᵀ = J(x) VᵀV J(x')ᵀ``, exact when ``x, x'`` are among the ``M`` points and the
rank is full. The linear model ``f(x) = f(x; θ*) + ψ(x) β`` with ``β ~ N(0, α^{-1} I_K)`` is the
linearised model restricted to ``span(V)``; its posterior is ``K``-dimensional.

``K_MM`` is never formed: a product ``K_MM w`` is one VJP and one JVP over the ``M`` points, and the
eigenpairs come from randomised subspace iteration. Memory is ``O(K D + M C K)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import persistence
from ..core.checks import check_positive_int, check_sample_budget
from ..core.linalg import top_eigenpairs
from ..core.seeds import seeded_generator
from ..model.data import Data
from ..network import inputs as trees
from ..network.features import FeatureOperator, Pullback

DEFAULT_POINTS, DEFAULT_RANK = 1000, 20


@dataclass(frozen=True)
class Basis:
    """A Nyström basis of ``rank`` directions on ``n_points`` points (``None``: the defaults)."""

    n_points: int | None = None
    rank: int | None = None

    def __post_init__(self):
        for name in ("n_points", "rank"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))

    def check_budget(self, n_params: int) -> None:
        """Raise before any work if the basis ``[K, D]`` exceeds the memory budget."""
        k = self.rank or DEFAULT_RANK
        check_sample_budget(
            k * n_params // 2,
            f"A Nyström basis of rank {k} over {n_params} parameters",
            "Lower `rank`.",
        )

    @staticmethod
    def settings_from(meta: dict, path) -> dict:
        """``n_points`` and ``rank`` from a saved file's header, checked."""
        optional_int = (int, type(None))
        persistence.check_fields(meta, {"n_points": optional_int, "rank": optional_int}, path)
        return {"n_points": meta["n_points"], "rank": meta["rank"]}


def basis_size(
    n_points: int | None, rank: int | None, n_data: int, n_outputs: int
) -> tuple[int, int]:
    """``(M, K)`` on ``N = n_data`` points: the defaults ``min(1000, N)`` and ``min(20, M·C)``."""
    if n_points is not None and n_points > n_data:
        raise ValueError(f"`n_points` = {n_points} exceeds the {n_data} training points; lower it.")
    n_points = n_points or min(DEFAULT_POINTS, n_data)
    rank = rank or min(DEFAULT_RANK, n_points * n_outputs)
    if rank > n_points * n_outputs:
        raise ValueError(
            f"`rank` = {rank} exceeds n_points·C = {n_points}·{n_outputs} = "
            f"{n_points * n_outputs}, the size of the NTK Gram matrix. Lower `rank` or raise "
            "`n_points`."
        )
    return n_points, rank


class ProjectedFeatures(FeatureOperator):
    """``ψ(x) = J(x) Vᵀ``: features restricted to the row space of a basis ``V`` ``[K, D]``.

    Args:
        features: The full feature operator ``J`` (``D`` columns).
        basis: ``[K, D]`` orthonormal rows.
    """

    def __init__(self, features: FeatureOperator, basis: Tensor):
        self.features = features
        self.basis = basis.to(dtype=features.dtype, device=features.device)
        self.n_params, self.dtype, self.device = basis.shape[0], features.dtype, features.device

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.features.forward(x)

    def jvp(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self.features.jvp(x, tangents @ self.basis)

    def pullback(self, x: Tensor) -> tuple[Tensor, Pullback]:  # noqa: D102
        f0, pull = self.features.pullback(x)
        return f0, lambda u: pull(u) @ self.basis.T

    def per_example_vjp(self, x: Tensor, cotangents: Tensor) -> Tensor:  # noqa: D102
        return self.features.per_example_vjp(x, cotangents) @ self.basis.T

    def to_dense(self, x: Tensor) -> Tensor:
        """``ψ(x)``: ``[N, C, K]``, from ``K`` forward-mode JVPs."""
        return self.features.jvp(x, self.basis)[1].permute(1, 2, 0)


def nystrom_basis(
    features: FeatureOperator,
    data: Data,
    n_points: int,
    rank: int,
    *,
    seed: int = 0,
    oversample: int = 10,
    power_iters: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """The orthonormal basis ``V`` ``[K', D]`` of the Nyström NTK on ``n_points`` random points.

    Directions with ``λ_k ≤ 10⁻¹⁰ λ_1`` (rank deficiency of ``K_MM``) are dropped, so ``K' ≤ rank``.

    Returns:
        ``V``, the eigenvalues ``[K']`` and the indices ``[M]`` of the inducing points.
    """
    generator = seeded_generator(seed, "nystrom")
    points = data.random_order(generator)[:n_points].sort().values
    x, _ = data.subset(points)
    batches = trees.split(x, data.batch_size)
    n_outputs = features.forward(trees.take(x, slice(0, 1))).shape[-1]

    def vjp(w: Tensor) -> Tensor:  # [k, M·C] ↦ Φ_Mᵀ w: [k, D]
        w = w.reshape(w.shape[0], -1, n_outputs).to(features.dtype)
        rows = w.split(data.batch_size, dim=1)
        return sum(features.vjp(xb, wb) for xb, wb in zip(batches, rows, strict=True))

    def gram(w: Tensor) -> Tensor:  # K_MM w, one VJP and one JVP pass
        t = vjp(w)
        return torch.cat([features.jvp(xb, t)[1] for xb in batches], dim=1).reshape(w.shape[0], -1)

    values, vectors = top_eigenpairs(
        gram,
        n_points * n_outputs,
        rank,
        oversample=oversample,
        power_iters=power_iters,
        generator=generator,
        dtype=features.dtype,
        device=features.device,
    )
    keep = values > 1e-10 * values[0]
    values, vectors = values[keep], vectors[:, keep]
    basis = vjp(vectors.T / values.sqrt()[:, None]).double()
    # Re-orthonormalise against round-off (exact in exact arithmetic).
    basis = torch.linalg.qr(basis.T)[0].T
    return basis.to(features.dtype), values, points


def fit_nystrom(
    features: FeatureOperator, data: Data, spec: Basis, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`nystrom_basis` of the size ``spec`` asks for on ``data`` (checked)."""
    n_outputs = features.forward(data.subset(torch.arange(1))[0]).shape[-1]
    n_points, rank = basis_size(spec.n_points, spec.rank, len(data), n_outputs)
    return nystrom_basis(features, data, n_points, rank, seed=seed)
