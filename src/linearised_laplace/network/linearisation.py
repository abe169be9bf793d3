r"""Matrix-free linearisation of a ``torch.nn.Module`` at its trained parameters.

The tangent linear model of a network ``f(x; θ)`` at ``θ*`` is

$$ f_{\mathrm{lin}}(x; θ) = f(x; θ^*) + J(x)(θ − θ^*), \qquad J(x) = ∂f(x; θ)/∂θ |_{θ^*} ∈ ℝ^{C×D}. $$

:class:`Linearisation` gives ``J(x) v`` (forward mode, ``torch.func.jvp``), ``J(x)ᵀ u`` (reverse mode,
``torch.func.vjp``) and per-example ``J(x_i)ᵀ u_i`` for ``K`` vectors at once, without building
``J`` of the data set; for many vectors on a small network it may build one batch's ``J(x)`` and
multiply, where that is cheaper. Modules without forward-mode support (``nn.TransformerEncoderLayer``'s fast path, ``nn.LSTM``
on CPU) fall back automatically to a JVP computed as the VJP of a VJP.

The network always runs in evaluation mode (BatchNorm on its running statistics, no dropout) on a
private copy of its parameters and buffers; the user's module, its tensors and its train/eval flags
are left exactly as they were.
"""

from __future__ import annotations

import time
import warnings
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..core.checks import check_finite, check_output
from . import inputs as trees
from .features import FeatureOperator, Pullback
from .inputs import Inputs, as_inputs
from .modules import eval_mode, lacks_forward_ad, model_state
from .parameters import ParameterSpec, select_parameters

TangentBatching = Literal["auto", "loop", "vmap", "jacobian"]
BATCHINGS = ("auto", "loop", "vmap", "jacobian")
JACOBIAN_BYTES = 256 * 2**20
"""Largest per-batch Jacobian ``[N, C, D]`` that the ``"jacobian"`` path builds."""


class Linearisation(FeatureOperator):
    """The tangent linear model of a network at its current parameters ``θ*``.

    Args:
        model: The trained network; it must map a batch ``x`` to outputs ``[N, C]``. ``x`` is a
            tensor ``[N, ...]`` (``model(x)``), a tuple of them (``model(*x)``) or a dict of them
            (``model(**x)``), every tensor with ``N`` rows (:mod:`~linearised_laplace.network.inputs`);
            the outputs may also be the first element of a tuple or dict, a dict's ``"logits"``
            or a ``ModelOutput``'s ``.logits``.
        parameters: Which parameters to linearise (see
            :func:`~linearised_laplace.network.parameters.select_parameters`): ``"all"`` trainable ones
            (default), ``"last_layer"``, names or ``fnmatch`` patterns, or flat indices.
        exclude_norm: Leave normalisation-layer affine parameters out of the linearisation.
        tangent_batching: How ``K`` tangents are pushed through: ``"loop"``, ``"vmap"``,
            ``"jacobian"`` (build each batch's Jacobian ``[N, C, D]`` once, by per-example
            reverse mode, and multiply: the cheapest for many tangents on a small network), or
            ``"auto"`` (default): the first JVP of several tangents times one JVP + VJP each way
            on up to 8 of them and 128 inputs of its batch and keeps the faster (which one wins
            depends on the network and the hardware); calls with at least ``C`` tangents take
            the ``"jacobian"`` path where the batch's Jacobian fits in :data:`JACOBIAN_BYTES`.
        enable_backprop: Keep the autograd graph to the inputs in ``forward``, ``jvp`` and
            ``to_dense``, so that predictions are differentiable in ``x`` (laplace-torch's
            ``enable_backprop``). Never to the parameters, which stay detached.

    Attributes:
        selection: The linearised parameters.
        theta_star: ``[D]`` their values at linearisation.
    """

    def __init__(
        self,
        model: nn.Module,
        parameters: ParameterSpec = "all",
        *,
        exclude_norm: bool = False,
        tangent_batching: TangentBatching = "auto",
        enable_backprop: bool = False,
    ):
        if tangent_batching not in BATCHINGS:
            raise ValueError(
                f"`tangent_batching` must be 'auto', 'loop', 'vmap' or 'jacobian', got "
                f"{tangent_batching!r}."
            )
        self.selection = select_parameters(model, parameters, exclude_norm=exclude_norm)
        self.model = model
        self.tangent_batching = tangent_batching
        self.enable_backprop = bool(enable_backprop)
        self.batching: str | None = {"auto": None, "jacobian": "loop"}.get(
            tangent_batching, tangent_batching
        )
        state = model_state(model)
        self._order = list(state)
        self._theta = {n: state.pop(n).clone() for n in self.selection.names}
        self._frozen = {n: t.clone() for n, t in state.items()}
        self.theta_star = self.selection.flatten(self._theta)
        self.n_params = self.selection.n_params
        self.dtype, self.device = self.theta_star.dtype, self.theta_star.device
        self.forward_ad: bool | None = None  # None until the first JVP tells
        self._per_example_vmap = True
        self._outputs: int | None = None  # C, read off the first batch
        self._cached: tuple[tuple, Tensor, Tensor] | None = None  # last batch's ((x, v), f, J)

    def snapshot(self) -> dict[str, Tensor]:
        """The private copy of every parameter and buffer, in the model's order."""
        state = {**self._theta, **self._frozen}
        return {name: state[name] for name in self._order}

    def changed(self) -> str | None:
        """The first tensor of the model that differs from the private copy, or ``None``."""
        current = model_state(self.model)
        if list(current) != self._order:
            return "the set of parameters and buffers"
        for name, saved in self.snapshot().items():
            now = current[name]
            same = now.shape == saved.shape and now.dtype == saved.dtype
            if not (same and now.device == saved.device and torch.equal(now, saved)):
                return name
        return None

    def refresh(self) -> None:
        """Re-read the private copy from the model's current parameters and buffers."""
        state = model_state(self.model)
        for name, saved in self.snapshot().items():
            if state[name].shape != saved.shape or state[name].dtype != saved.dtype:
                raise ValueError(
                    f"The model's {name} changed from {list(saved.shape)} {saved.dtype} to "
                    f"{list(state[name].shape)} {state[name].dtype} since the method was built; "
                    "construct the method again for the new architecture or dtype."
                )
        self.device = state[self.selection.names[0]].device
        self.restore({name: t.clone() for name, t in state.items()})

    def restore(self, state: dict[str, Tensor]) -> None:
        """Replace the private copy (e.g. by a saved one); ``state`` must hold every tensor."""
        for name in self._theta:
            self._theta[name] = state[name].to(self.device)
        for name in self._frozen:
            self._frozen[name] = state[name].to(self.device)
        self.theta_star = self.selection.flatten(self._theta)
        self._cached = None

    def _call(self, theta: dict[str, Tensor], x: Inputs) -> Tensor:
        args, kwargs = trees.arguments(x)
        with eval_mode(self.model):
            out = functional_call(self.model, {**theta, **self._frozen}, args, kwargs)
        return check_output(trees.logits(out), trees.batch_size(x))

    def _inputs(self, x: Inputs) -> Inputs:
        return trees.to(as_inputs(x, self.dtype), self.device)

    def check_inputs(self, x: Inputs, name: str = "x") -> Inputs:
        """Validate prediction inputs ``x``; returns them in normal form on the device.

        ``x`` is a tensor ``[N, ...]``, a tuple or a dict of them (see :func:`as_inputs`). Beyond
        :func:`as_inputs`: the values must be finite, and the network must accept one example
        (a raw torch error, e.g. of a wrong feature width, becomes a ``ValueError``).
        """
        x = as_inputs(x, self.dtype, name)
        what = f"`{name}`" if name.isidentifier() else name
        for label, leaf in zip(trees.leaf_names(x, name), trees.leaves(x), strict=True):
            check_finite(f"The inputs {label}" if name.isidentifier() else label, leaf)
        x = trees.to(x, self.device)
        try:
            self.forward(trees.take(x, slice(0, 1)))
        except RuntimeError as err:
            single = isinstance(x, Tensor) and x.ndim == 1
            raise ValueError(
                f"The network cannot take {what} of shape {trees.describe(x)}: "
                f"{str(err).splitlines()[0]}. Pass inputs shaped like the training inputs "
                "[N, ...], one row per example"
                + (f" ({name}[None] for a single example)." if single else ".")
            ) from err
        except trees.OutputTypeError:
            raise
        except TypeError as err:  # e.g. a keyword the model's forward does not take
            raise TypeError(
                f"The network cannot take {what} {trees.describe(x)}: "
                f"{str(err).splitlines()[0]}. Pass inputs with the structure of the training "
                "inputs: a tensor for model(x), a tuple for model(*x), a dict for model(**x)."
            ) from err
        return x

    def forward(self, x: Inputs) -> Tensor:
        """The network's outputs ``f(x; θ*)``: ``[N, C]``."""
        x = self._inputs(x)
        if trees.batch_size(x) == 0:  # a rank's empty share of a batch
            return self._empty_outputs()
        with torch.set_grad_enabled(self.enable_backprop and torch.is_grad_enabled()):
            out = self._call(self._theta, x)
        self._outputs = out.shape[-1]
        return out

    def evaluate(self, x: Inputs, theta: Tensor) -> Tensor:
        """The network ``f(x; θ)`` at other values ``θ`` ``[D]`` of the linearised parameters: ``[N, C]``.

        Not linearised, and differentiable in ``θ``.
        """
        delta = self.selection.unflatten(theta - self.theta_star)
        return self._call({n: self._theta[n] + d for n, d in delta.items()}, self._inputs(x))

    def jvp(self, x: Inputs, tangents: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x; θ*)`` ``[N, C]`` and ``J(x) v_k`` ``[K, N, C]`` for tangents ``[K, D]``."""
        x = self._inputs(x)
        if tangents.shape[0] == 0 or trees.batch_size(x) == 0:
            out = self.forward(x)
            return out, out.new_zeros(tangents.shape[0], *out.shape)
        if self._use_jacobian(x, tangents.shape[0]):
            out, jac = self._batch_jacobian(x)
            return out, torch.einsum("ncd,kd->knc", jac, tangents)
        if self.forward_ad is not False:
            try:
                result = self._jvp_forward(x, tangents)
                self.forward_ad = True
                return result
            except (NotImplementedError, RuntimeError) as err:
                if self.forward_ad or not lacks_forward_ad(err):
                    raise
                warnings.warn(
                    f"The model does not support forward-mode AD ({str(err).splitlines()[0]}); "
                    "computing JVPs as the VJP of a VJP instead, which is slower.",
                    stacklevel=2,
                )
                self.forward_ad = False
        return self._jvp_double_vjp(x, tangents)

    def _jvp_forward(self, x: Inputs, tangents: Tensor) -> tuple[Tensor, Tensor]:
        def f(theta: dict[str, Tensor]) -> Tensor:
            return self._call(theta, x)

        if self.batching is None and tangents.shape[0] > 1:
            self.batching = self._fastest_batching(x, tangents)
        trees = self.selection.unflatten(tangents)
        if self.batching == "vmap" and tangents.shape[0] > 1:  # one tangent: always the loop
            out = f(self._theta)
            jv = vmap(lambda t: torch.func.jvp(f, (self._theta,), (t,))[1])(trees)
            return out, jv
        outs = [
            torch.func.jvp(f, (self._theta,), ({n: t[k] for n, t in trees.items()},))
            for k in range(tangents.shape[0])
        ]
        return outs[0][0], torch.stack([o[1] for o in outs])

    def _fastest_batching(self, x: Inputs, tangents: Tensor) -> str:
        """``"loop"`` or ``"vmap"``, whichever pushes tangents through faster (best of 2).

        Timed on at most 8 tangents and 128 inputs, so that the choice costs little even on the
        first call of a large predictive.
        """
        x, tangents = trees.take(x, slice(0, 128)), tangents[:8]
        seconds = {}
        for mode in ("loop", "vmap"):
            self.batching = mode
            seconds[mode] = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                try:
                    _, jv = self._jvp_forward(x, tangents)
                    self.pullback(x)[1](jv)
                except RuntimeError:
                    if mode == "loop":  # not a batching problem: let `jvp` handle it
                        raise
                    break  # a model vmap cannot batch
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds[mode] = min(seconds[mode], time.perf_counter() - start)
        return min(seconds, key=seconds.get)

    def _empty_outputs(self) -> Tensor:
        """``[0, C]`` outputs of an empty batch (a rank's empty share), without calling the model."""
        if self._outputs is None:
            raise ValueError(
                "An empty batch reached the network before any non-empty one, so its number of "
                "outputs C is unknown; pass a non-empty batch first."
            )
        return torch.zeros(0, self._outputs, dtype=self.dtype, device=self.device)

    def _n_outputs(self, x: Inputs) -> int:
        if self._outputs is None:
            self._outputs = self.forward(trees.take(x, slice(0, 1))).shape[-1]
        return self._outputs

    def _may_use_jacobian(self, x: Inputs) -> bool:
        if self.tangent_batching != "auto":
            return self.tangent_batching == "jacobian"
        size = trees.batch_size(x) * self._n_outputs(x) * self.n_params * self.dtype.itemsize
        return size <= JACOBIAN_BYTES

    def _use_jacobian(self, x: Inputs, n_tangents: int) -> bool:
        """Whether ``J(x) V`` goes through the batch's Jacobian: forced, or (auto) ``K ≥ C``.

        A rule of sizes rather than of timings, so that results never depend on the machine's
        load: building ``J(x)`` costs about ``C/2`` tangents' JVP + VJP (per-example reverse mode
        for a CNN on Fashion-MNIST cost 4.7 tangents at ``C = 10``).
        """
        if self.tangent_batching == "jacobian":
            return True
        return n_tangents >= max(2, self._n_outputs(x)) and self._may_use_jacobian(x)

    def _is_cached(self, x: Inputs) -> bool:
        # the cache holds x's tensors themselves, so no other tensor can reuse their memory
        if self._cached is None:
            return False
        cached, versions = self._cached[0]
        now = trees.leaves(x)
        same = len(now) == len(cached) and all(a is b for a, b in zip(now, cached, strict=False))
        return same and versions == [t._version for t in now]

    def _batch_jacobian(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """``f(x; θ*)`` and ``J(x)`` ``[N, C, D]``, kept for the next call on the same batch."""
        if not self._is_cached(x):
            self._cached = None  # free the last batch's first
            out = self.forward(x)
            jac = self.to_dense(x)
            if jac.requires_grad:  # a graph to the inputs is not reusable across backward passes
                return out, jac
            now = trees.leaves(x)
            self._cached = ((now, [t._version for t in now]), out, jac)
        return self._cached[1], self._cached[2]

    def _jvp_double_vjp(self, x: Inputs, tangents: Tensor) -> tuple[Tensor, Tensor]:
        # u ↦ J(x)ᵀu is linear, so its VJP with cotangent v is J(x) v. The math attention kernel
        # is differentiable twice, unlike the fused CPU kernels.
        with sdpa_kernel(SDPBackend.MATH):
            out, vjp_fn = vjp(lambda theta: self._call(theta, x), self._theta)
            _, vjp_of_vjp = vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(out))
            trees = self.selection.unflatten(tangents)
            jv = [
                vjp_of_vjp({n: t[k] for n, t in trees.items()})[0] for k in range(tangents.shape[0])
            ]
        return self._detached(out), self._detached(torch.stack(jv))

    def pullback(self, x: Inputs) -> tuple[Tensor, Pullback]:
        """``f(x; θ*)`` and the map ``u ↦ J(x)ᵀ u`` from ``[K, N, C]`` to ``[K, D]``.

        Where the ``"jacobian"`` path may pay off, the reverse pass is set up only for calls with
        few cotangents; the others are products with the batch's (cached) Jacobian.
        """
        x = self._inputs(x)
        if not self._may_use_jacobian(x):
            return self._reverse_pullback(x)
        out = self._cached[1] if self._is_cached(x) else self.forward(x)

        def fn(cotangents: Tensor) -> Tensor:
            if cotangents.shape[0] == 0:
                return cotangents.new_zeros(0, self.n_params)
            if self._use_jacobian(x, cotangents.shape[0]):
                return torch.einsum("ncd,knc->kd", self._batch_jacobian(x)[1], cotangents)
            return self._reverse_pullback(x)[1](cotangents)

        return out, fn

    def _reverse_pullback(self, x: Inputs) -> tuple[Tensor, Pullback]:
        out, vjp_fn = vjp(lambda theta: self._call(theta, x), self._theta)
        flatten = self.selection.flatten

        def fn(cotangents: Tensor) -> Tensor:
            if cotangents.shape[0] == 0:
                return cotangents.new_zeros(0, self.n_params)
            if self.batching == "vmap" and cotangents.shape[0] > 1:
                with sdpa_kernel(SDPBackend.MATH):
                    return flatten(vmap(vjp_fn)(cotangents)[0], n_lead=1)
            return torch.stack([flatten(vjp_fn(u)[0]) for u in cotangents])

        return out.detach(), fn

    def per_example_vjp(self, x: Inputs, cotangents: Tensor) -> Tensor:
        """``J(x_i)ᵀ u_i`` for each point of the batch: ``[N, C] → [N, D]``."""
        x = self._inputs(x)
        n = trees.batch_size(x)
        if n == 0:
            return cotangents.new_zeros(0, self.n_params)

        def single(xi: Inputs, ui: Tensor) -> Tensor:
            _, fn = vjp(lambda theta: self._call(theta, trees.take(xi, None)), self._theta)
            return self.selection.flatten(fn(ui[None])[0])

        with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no batching rules
            if self._per_example_vmap:
                try:
                    return vmap(single)(x, cotangents)
                except (NotImplementedError, RuntimeError):
                    self._per_example_vmap = False
            return torch.stack([single(trees.take(x, i), cotangents[i]) for i in range(n)])

    def linearised_forward(self, x: Inputs, tangents: Tensor, chunk: int = 512) -> Tensor:
        """``f(x; θ*) + J(x) v_k`` for tangents ``[K, D]``: ``[K, N, C]``.

        Inputs go through ``chunk`` at a time: a batched JVP holds ``K`` copies of the
        activations, which for a whole test set can exceed memory.
        """
        parts = []
        for inputs in trees.split(self._inputs(x), chunk):
            out, jv = self.jvp(inputs, tangents)
            parts.append(out + jv)
        return torch.cat(parts, dim=1)

    def to_dense(self, x: Inputs) -> Tensor:
        """The Jacobian ``J(x)``: ``[N, C, D]``, as per-example ``torch.func.jacrev`` under ``vmap``.

        Differentiating each example separately costs ``O(N C)`` backward passes of one example,
        where ``jacrev`` of the whole batch would cost ``O(N C)`` passes of the whole batch.
        """
        x = self._inputs(x)
        if trees.batch_size(x) == 0:
            return self._empty_outputs().new_zeros(0, self._outputs, self.n_params)

        def single(xi: Inputs) -> dict[str, Tensor]:
            return jacrev(lambda theta: self._call(theta, trees.take(xi, None))[0])(self._theta)

        with sdpa_kernel(SDPBackend.MATH):
            if self._per_example_vmap:
                try:
                    return self._detached(self.selection.flatten(vmap(single)(x), n_lead=2))
                except (NotImplementedError, RuntimeError):
                    self._per_example_vmap = False
            jac = jacrev(lambda theta: self._call(theta, x))(self._theta)
        return self._detached(self.selection.flatten(jac, n_lead=2))

    def _detached(self, t: Tensor) -> Tensor:
        """``t`` cut from the graph, unless it may carry gradients to the inputs."""
        return t if self.enable_backprop else t.detach()
