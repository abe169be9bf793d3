r"""Dense reference implementations, written independently of the matrix-free code paths.

They build everything explicitly in float64 (the Jacobian with ``torch.func.jacrev`` on a private
evaluation-mode copy of the network, the GGN, the posterior) and serve as oracles in tests.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev


def jacobian(model: nn.Module, x: Tensor, names: list[str] | None = None) -> Tensor:
    """``J(x)`` ``[N, C, D]`` w.r.t. the named parameters (default: all trainable), in order."""
    net = copy.deepcopy(model).eval()
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    names = list(params) if names is None else names
    chosen = {n: params[n] for n in names}

    def f(theta: dict[str, Tensor]) -> Tensor:
        return functional_call(net, {**params, **theta}, (x,))

    jac = jacrev(f)(chosen)
    return torch.cat([jac[n].flatten(start_dim=2) for n in names], dim=-1)


def ggn(jac: Tensor, hessians: Tensor) -> Tensor:
    """``M = Σ_i J_iᵀ B_i J_i`` from ``[N, C, D]`` Jacobians and ``[N, C, C]`` Hessians."""
    return torch.einsum("ncd,nce,nef->df", jac, hessians, jac)


def posterior_precision(jac: Tensor, hessians: Tensor, prior_diag: Tensor) -> Tensor:
    """``H = M + diag(A)``: ``[D, D]``."""
    return ggn(jac, hessians) + torch.diag(prior_diag)


def sto_closed_form(
    jac: Tensor, factors: Tensor, prior_diag: Tensor, xi: Tensor, nu: Tensor, hessians: Tensor
) -> Tensor:
    r"""``ζ_k = H^{-1}(A^{1/2} ξ_k + Σ_i J_iᵀ L_i ν_{i,k})`` for ``ξ`` ``[K, D]``, ``ν`` ``[K, N, C]``."""
    rhs = xi * prior_diag.sqrt() + torch.einsum("ncd,nce,kne->kd", jac, factors, nu)
    return torch.linalg.solve(posterior_precision(jac, hessians, prior_diag), rhs.T).T
