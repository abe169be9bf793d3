r"""Feature operators: the ``Φ`` of a linear model ``f(x) = f_0(x) + Φ(x) θ``, matrix-free.

A feature operator maps a batch of inputs ``x`` to the offset ``f_0(x)`` ``[N, C]`` and to products
with its Jacobian ``Φ(x)`` ``[N, C, D]``, without building ``Φ``. Two implementations exist: an explicit
(dense or sparse) matrix here, and a linearised network in :mod:`~linearised_laplace.network.linearisation`.
Every operator has ``to_dense`` so that tests can compare it with the matrix it represents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

Pullback = Callable[[Tensor], Tensor]


class FeatureOperator(ABC):
    """Interface of ``x ↦ (f_0(x), Φ(x))`` with ``Φ(x)`` of shape ``[N, C, D]``."""

    n_params: int
    dtype: torch.dtype
    device: torch.device

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """The offset ``f_0(x)``: ``[N, C]``."""

    @abstractmethod
    def jvp(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
        """``(f_0(x), Φ(x) v_k)`` for tangents ``[K, D]``: returns ``[N, C]`` and ``[K, N, C]``."""

    @abstractmethod
    def pullback(self, x: Tensor) -> tuple[Tensor, Pullback]:
        """``f_0(x)`` and the map ``u ↦ Φ(x)ᵀ u`` from ``[K, N, C]`` to ``[K, D]``."""

    @abstractmethod
    def per_example_vjp(self, x: Tensor, cotangents: Tensor) -> Tensor:
        """``Φ(x_i)ᵀ u_i`` for each point separately: ``[N, C] → [N, D]``."""

    @abstractmethod
    def to_dense(self, x: Tensor) -> Tensor:
        """The Jacobian ``Φ(x)``: ``[N, C, D]``."""

    def vjp(self, x: Tensor, cotangents: Tensor) -> Tensor:
        """``Φ(x)ᵀ u_k`` for cotangents ``[K, N, C]``: ``[K, D]``."""
        return self.pullback(x)[1](cotangents)


class MatrixFeatures(FeatureOperator):
    """An explicit feature matrix; its inputs ``x`` are integer row (data point) indices.

    Args:
        matrix: Dense ``[n, C, D]``, or a dense or sparse (COO or CSR) ``[n·C, D]`` matrix whose rows
            ``i·C … i·C + C − 1`` belong to data point ``i``.
        n_outputs: ``C`` for a 2-D matrix (default 1).
        offset: Optional ``[n, C]`` offset ``f_0``; zero by default.
    """

    def __init__(self, matrix: Tensor, n_outputs: int = 1, offset: Tensor | None = None):
        if not isinstance(matrix, Tensor):
            raise TypeError(f"`matrix` must be a Tensor, got {type(matrix).__name__}.")
        self.sparse = matrix.layout != torch.strided
        if matrix.ndim == 3 and not self.sparse:
            n_outputs = matrix.shape[1]
        elif matrix.ndim != 2:
            raise ValueError(
                f"A feature matrix must be dense [n, C, D] or 2-D [n·C, D], got shape "
                f"{list(matrix.shape)}."
            )
        elif matrix.shape[0] % n_outputs:
            raise ValueError(
                f"A 2-D feature matrix must have n·C rows; {matrix.shape[0]} rows are not a "
                f"multiple of n_outputs = {n_outputs}."
            )
        if self.sparse:
            self.matrix = matrix.to_sparse_coo().coalesce()
        else:
            self.matrix = matrix.reshape(-1, n_outputs, matrix.shape[-1])
        self.n_outputs = n_outputs
        self.n_points = matrix.shape[0] // (n_outputs if matrix.ndim == 2 else 1)
        self.n_params = matrix.shape[-1]
        self.dtype, self.device = matrix.dtype, matrix.device
        if offset is not None and offset.shape != (self.n_points, n_outputs):
            raise ValueError(
                f"`offset` must have shape [{self.n_points}, {n_outputs}], got {list(offset.shape)}."
            )
        self.offset = offset

    def _rows(self, x: Tensor) -> Tensor:
        x = x.reshape(-1).long()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.n_points):
            raise IndexError(f"Row indices must lie in [0, {self.n_points}).")
        return x

    def _dense_block(self, x: Tensor) -> Tensor:
        """``Φ`` of rows ``x``: a view when they are consecutive (as in ordered data passes)."""
        if x.numel() and bool((x.diff() == 1).all()):
            return self.matrix[int(x[0]) : int(x[-1]) + 1]
        return self.matrix[x]

    def _sparse_block(self, x: Tensor) -> Tensor:
        c = self.n_outputs
        rows = (x[:, None] * c + torch.arange(c, device=x.device)).reshape(-1)
        return torch.index_select(self.matrix, 0, rows).coalesce()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self._rows(x)
        if self.offset is None:
            return torch.zeros(x.numel(), self.n_outputs, dtype=self.dtype, device=self.device)
        return self.offset[x]

    def jvp(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        x = self._rows(x)
        if self.sparse:
            out = torch.sparse.mm(self._sparse_block(x), tangents.T)  # [b·C, K]
            out = out.T.reshape(tangents.shape[0], x.numel(), self.n_outputs)
        else:
            out = torch.einsum("bcd,kd->kbc", self._dense_block(x), tangents)
        return self.forward(x), out

    def pullback(self, x: Tensor) -> tuple[Tensor, Pullback]:  # noqa: D102
        x = self._rows(x)
        if self.sparse:
            block_t = self._sparse_block(x).t()

            def fn(u: Tensor) -> Tensor:
                return torch.sparse.mm(block_t, u.reshape(u.shape[0], -1).T).T

        else:
            block = self._dense_block(x)

            def fn(u: Tensor) -> Tensor:
                return torch.einsum("kbc,bcd->kd", u, block)

        return self.forward(x), fn

    def per_example_vjp(self, x: Tensor, cotangents: Tensor) -> Tensor:  # noqa: D102
        x = self._rows(x)
        if not self.sparse:
            return torch.einsum("bc,bcd->bd", cotangents, self._dense_block(x))
        block = self._sparse_block(x)
        (row, col), values = block.indices(), block.values()
        scaled = values * cotangents.reshape(-1)[row]
        out = torch.zeros(x.numel(), self.n_params, dtype=self.dtype, device=self.device)
        return out.index_put_((row // self.n_outputs, col), scaled, accumulate=True)

    def to_dense(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self._rows(x)
        if self.sparse:
            return (
                self._sparse_block(x).to_dense().reshape(x.numel(), self.n_outputs, self.n_params)
            )
        return self._dense_block(x)


class OutputMap(FeatureOperator):
    """Features followed by a fixed linear map of the outputs: ``x ↦ (A f_0(x), A Φ(x))``.

    For a forward operator applied after the network (a ray transform, a blur), which cannot run
    inside ``torch.func`` transforms when it is a sparse matrix: it is applied outside them, to
    the JVP's outputs and before the VJP's cotangents.

    Args:
        features: The network's features, outputs ``[N, C_in]``.
        forward: ``[..., C_in] ↦ [..., C_out]``, linear.
        adjoint: Its transpose ``[..., C_out] ↦ [..., C_in]``.
    """

    def __init__(
        self,
        features: FeatureOperator,
        forward: Callable[[Tensor], Tensor],
        adjoint: Callable[[Tensor], Tensor],
    ):
        self.features, self.map, self.adjoint = features, forward, adjoint
        self.n_params, self.dtype, self.device = features.n_params, features.dtype, features.device

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.map(self.features.forward(x))

    def jvp(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        f0, jv = self.features.jvp(x, tangents)
        return self.map(f0), self.map(jv)

    def pullback(self, x: Tensor) -> tuple[Tensor, Pullback]:  # noqa: D102
        f0, pull = self.features.pullback(x)
        return self.map(f0), lambda u: pull(self.adjoint(u))

    def per_example_vjp(self, x: Tensor, cotangents: Tensor) -> Tensor:  # noqa: D102
        return self.features.per_example_vjp(x, self.adjoint(cotangents))

    def to_dense(self, x: Tensor) -> Tensor:  # noqa: D102
        jac = self.features.to_dense(x)  # [N, C_in, D]
        return self.map(jac.transpose(1, 2)).transpose(1, 2)
