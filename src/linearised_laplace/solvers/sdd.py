r"""Stochastic dual descent (SDD; Lin et al., ICLR 2024) for the dual system ``(I + LᵀKL) w = b``.

With ``M = I + Lᵀ K L`` (``nC × nC``, ``K = Φ A^{-1} Φᵀ``) and ``K`` right-hand sides ``b`` stacked as
``[K, n·C]``, SDD minimises the dual objective ``½ wᵀ M w − wᵀ b`` of each row by randomised
block-coordinate descent: a step draws a minibatch 𝔅 of data points (an epoch is a random
permutation of them) and takes the gradient on 𝔅's coordinates only,

$$ g = \tfrac{n}{|𝔅|}\, P_𝔅 (M w − b), \qquad
   g_𝔅 = \tfrac{n}{|𝔅|}\bigl(w_𝔅 + L_𝔅ᵀ Φ_𝔅\, A^{-1} Φᵀ L w − b_𝔅\bigr), $$

an unbiased estimate of the full gradient, followed by a Nesterov-momentum step and geometric
(exponential) averaging,

$$ m ← ρ m + g, \qquad w ← w − β (g + ρ m), \qquad w̄ ← w̄ + r (w − w̄). $$

The averaged iterate ``w̄`` is returned. The ``D``-vectors ``v = A^{-1} Φᵀ L w`` and ``A^{-1} Φᵀ L m``
are maintained alongside: ``g`` is zero outside 𝔅, so ``A^{-1} Φᵀ L g`` is one VJP on
the batch, and ``L_𝔅ᵀ Φ_𝔅 v`` is one JVP on it. A step thus costs one JVP and one VJP on a minibatch,
like primal SGD, plus ``O(K·nC + K·D)`` vector updates; no step passes over the full data.

Why the dual: an error ``e = w − M^{-1} b`` moves the sample ``ζ = θ_0 − A^{-1}ΦᵀLw`` by
``A^{-1}ΦᵀL e``, whose squared prior norm is ``eᵀ LᵀKL e``: the flat directions of ``M``
(eigenvalues near 1), where gradient descent is slowest, barely move the samples. Directions with
``1 ≪ λ ≪ λ_max`` do, and converge at a rate of about ``λ / λ_max`` per step, so ill-conditioned
problems (small noise, smooth kernels) need many epochs (see :class:`SDD`).

Step size without tuning: ``β = lr / λ̂`` with ``λ̂ ≈ (n/m) λ_max(I + L_𝒮ᵀ Φ_𝒮 A^{-1} Φ_𝒮ᵀ L_𝒮)``,
estimated by Lanczos on a random subsample 𝒮 of ``m`` points (a minibatch by default): the curvature
of the ``n/|𝔅|``-scaled block step, which bounds the stable step (it is ``λ_max(M)`` at full batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.linalg import top_eigenvalue
from ..core.progress import progress_bar
from ..core.seeds import seeded_generator
from ..exceptions import DivergenceError
from ..model.linear_model import LinearGaussianModel
from .base import check_settings
from .kernel import dual_pullback


@dataclass(frozen=True)
class SDD:
    """Stochastic dual descent: minibatch block-coordinate descent on the dual (``space="dual"``).

    Unpreconditioned, so the epochs it needs grow with the condition number of ``I + LᵀKL``
    (``benchmarks/results/solver_fidelity-sdd.md`` gives them on three ill-conditioned
    problems, against preconditioned dual CG). Prefer :class:`CG` unless a full data pass per
    iteration is unaffordable.

    Args:
        n_epochs: Passes over the training data (each step visits one minibatch).
        lr: Dimensionless step size; the step in natural units is ``lr / λ̂``.
        momentum: Nesterov momentum ``ρ``, in ``[0, 1)``.
        averaging: Rate ``r ∈ (0, 1]`` of the geometric average ``w̄ ← w̄ + r (w − w̄)``, which is
            returned. ``None``: ``min(1, 100 / T)`` for ``T`` steps (the paper's choice).
        batch_size: Minibatch size; defaults to the training loader's.
        curvature_points: Data points in the random subsample on which ``λ̂`` is estimated;
            defaults to the batch size.
        curvature_iters: Lanczos iterations for that estimate.
        rtol: A sample whose final relative residual ``‖M w̄ − b‖ / ‖b‖`` (one extra data pass)
            exceeds this raises a :class:`~linearised_laplace.ConvergenceWarning`. ``None``
            (default): ``1e-2``.
    """

    n_epochs: int = 50
    lr: float = 0.5
    momentum: float = 0.9
    averaging: float | None = None
    batch_size: int | None = None
    curvature_points: int | None = None
    curvature_iters: int = 20
    rtol: float | None = None
    name = "sdd"
    advice = (
        "Raise lla.SDD(n_epochs=...), or use lla.CG() (full-batch, exact to its rtol) or "
        "solver='auto'."
    )

    def __post_init__(self):
        check_settings(
            "SDD",
            self,
            positive_ints=("n_epochs", "batch_size", "curvature_points", "curvature_iters"),
            positive=("lr", "rtol"),
            intervals={"momentum": "[0, 1)", "averaging": "(0, 1]"},
        )

    def tolerance(self, dtype: torch.dtype) -> float:
        """``rtol``, or its default (the same for every dtype: SDD stops at a step budget)."""
        return 1e-2 if self.rtol is None else self.rtol


def estimate_block_curvature(
    model: LinearGaussianModel, n_points: int, n_iter: int, generator: torch.Generator
) -> float:
    """``λ̂ ≈ (n/m) λ_max(I + L_𝒮ᵀ Φ_𝒮 A^{-1} Φ_𝒮ᵀ L_𝒮)`` by Lanczos on ``m`` random points 𝒮."""
    data, features, likelihood = model.data, model.features, model.likelihood
    subset = data.random_order(generator)[: min(n_points, len(data))]
    batches = [(x, *features.pullback(x)) for _, x, _ in data.batches(subset)]
    sizes = [int(f0.shape[0]) * model.n_outputs for _, f0, _ in batches]
    prior = model.precision.prior

    def matvec(w: Tensor) -> Tensor:  # [1, m·C]
        parts = w.split(sizes, dim=-1)
        t = sum(
            pull(likelihood.factor_vec(f0, u.reshape(1, f0.shape[0], -1)))
            for (_, f0, pull), u in zip(batches, parts, strict=True)
        )
        out = [
            likelihood.factor_t_vec(f0, features.jvp(x, t / prior)[1]).reshape(1, -1)
            for x, f0, _ in batches
        ]
        return w + torch.cat(out, dim=-1)

    top = top_eigenvalue(
        matvec,
        sum(sizes),
        n_iter=n_iter,
        generator=generator,
        dtype=prior.dtype,
        device=prior.device,
    )
    return len(data) / subset.numel() * top


def stochastic_dual_descent(
    model: LinearGaussianModel,
    rhs: Tensor,
    config: SDD,
    *,
    init: Tensor | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[Tensor, int]:
    """Minimise ``½ wᵀ(I + LᵀKL)w − wᵀb`` for the ``K`` rows of ``b`` by stochastic dual descent.

    Args:
        model: The linear-Gaussian model (features, likelihood, prior and data).
        rhs: ``b`` ``[K, n·C]``.
        config: SDD settings.
        init: ``[K, n·C]`` warm start (one extra VJP pass); defaults to zero, i.e. the prior draws.
        seed: Seeds the minibatch order and the curvature estimate.
        progress: Show a progress bar.

    Returns:
        The averaged iterate ``w̄`` ``[K, n·C]`` and the number of steps.

    Raises:
        DivergenceError: The iterates became non-finite.
    """
    features, likelihood, data = model.features, model.likelihood, model.data
    n, k = len(data), rhs.shape[0]
    generator = seeded_generator(seed, "sdd")
    batch_size = config.batch_size or data.batch_size
    curvature = estimate_block_curvature(
        model, config.curvature_points or batch_size, config.curvature_iters, generator
    )
    n_steps = config.n_epochs * math.ceil(n / batch_size)
    rate = config.averaging or min(1.0, 100 / n_steps)
    step, rho = config.lr / curvature, config.momentum
    prior = model.precision.prior

    b = rhs.reshape(k, n, -1)
    if init is None:
        w, v = torch.zeros_like(b), rhs.new_zeros(k, model.n_params)
    else:
        w, v = init.reshape(k, n, -1).clone(), dual_pullback(model, init) / prior
    m, vm = torch.zeros_like(w), torch.zeros_like(v)
    w_avg = w.clone()
    with progress_bar(total=n_steps, enabled=progress, desc="SDD") as bar:
        for _ in range(config.n_epochs):
            for idx, x, _ in data.batches(data.random_order(generator), batch_size):
                f0, pull = features.pullback(x)
                kernel_w = likelihood.factor_t_vec(f0, features.jvp(x, v)[1])
                g = (n / idx.numel()) * (w[:, idx] + kernel_w - b[:, idx])  # [K, |𝔅|, C]
                vg = pull(likelihood.factor_vec(f0, g)) / prior  # A^{-1} Φᵀ L g
                m.mul_(rho)
                m[:, idx] += g
                vm.mul_(rho).add_(vg)
                w.sub_(step * rho * m)
                w[:, idx] -= step * g
                v.sub_(step * (vg + rho * vm))
                w_avg.lerp_(w, rate)
                bar.update()
    if not bool(torch.isfinite(w_avg).all()):
        raise DivergenceError(
            f"SDD diverged: the iterates became non-finite with lr={config.lr:g}. Lower the step, "
            f"e.g. SDD(lr={config.lr / 2:g})."
        )
    return w_avg.reshape(k, -1), n_steps
