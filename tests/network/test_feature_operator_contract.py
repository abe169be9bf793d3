"""The ``FeatureOperator`` contract, checked on every implementation (a table of factories × checks).

Each factory builds a tiny float64 operator ``x ↦ (f_0(x), Φ(x))`` together with the nonlinear
model it linearises, written independently of the operator as a function ``g(x, p)`` of its own
``D`` parameters, and the expansion point ``p_0``: ``f_0(x) = g(x, p_0)`` and ``Φ(x) = ∂g/∂p`` at
``p_0`` (``torch.func.jacrev``). Wrappers compose their wrapped model: ``ScaledFeatures`` is
``g(x, s ⊙ p)``, ``ProjectedFeatures`` is ``g(x, θ* + Vᵀ β)``, ``OutputMap`` is ``A g(x, θ)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from linearised_laplace import Linearisation, MatrixFeatures
from linearised_laplace.coordinates.g_prior import ScaledFeatures
from linearised_laplace.coordinates.ntk_basis import ProjectedFeatures
from linearised_laplace.network.features import FeatureOperator, OutputMap
from linearised_laplace.tomography import RayTransform
from linearised_laplace.tomography.linearised import observation_map
from linearised_laplace.tomography.unet import Flatten

from ..cases import classification_data, cnn, image_data, mlp, warm_batchnorm

CLOSE = {"rtol": 1e-10, "atol": 1e-12}
N_TANGENTS = (1, 2, 5)  # below, at and above C = 3: "auto" takes its loop/vmap and Jacobian paths


@dataclass
class Instance:
    """An operator, a batch of its inputs and the model it linearises: ``g(x, p)`` at ``p_0``."""

    op: FeatureOperator
    x: Tensor
    model: Callable[[Tensor, Tensor], Tensor]
    p0: Tensor

    def dense(self, x: Tensor) -> Tensor:
        """The oracle ``Φ(x) = ∂g(x, p)/∂p`` at ``p_0``: ``[N, C, D]``."""
        return jacrev(lambda p: self.model(x, p))(self.p0)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- factories -------------------------------------------------------------------------------


def _network(net: nn.Module, x: Tensor, batching: str) -> Instance:
    """``Linearisation`` of ``net``; its model is ``functional_call`` on the flat parameters."""
    net.eval()
    shapes = {n: p.shape for n, p in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def model(x: Tensor, theta: Tensor) -> Tensor:
        tensors = dict(zip(shapes, theta.split([s.numel() for s in shapes.values()]), strict=True))
        params = {n: t.reshape(shapes[n]) for n, t in tensors.items()}
        return functional_call(net, {**params, **buffers}, (x,))

    theta_star = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    lin = Linearisation(net, tangent_batching=batching)
    assert torch.equal(lin.theta_star, theta_star)  # parameters flattened in the model's order
    return Instance(lin, x, model, theta_star)


def linearised_mlp(batching: str) -> Instance:
    return _network(mlp(), classification_data(5)[0], batching)  # D = 38, C = 3


def linearised_cnn(batching: str) -> Instance:
    x, _ = image_data(5)
    return _network(warm_batchnorm(cnn(), x), x, batching)  # conv + BatchNorm, D = 123, C = 3


def image_network() -> Instance:
    """A tiny conv net with ``[N, 16]`` image outputs (4×4), for the ray transform."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 1, 3, padding=1)
    )  # D = 39
    x = torch.randn(5, 1, 4, 4, generator=_generator(1))
    return _network(Flatten(net), x, "auto")


def _csr(dense: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return dense.to_sparse_csr()


def matrix(layout: str, rows: list[int]) -> Instance:
    """``MatrixFeatures`` of a ``[8, 3, 6]`` matrix with an offset; inputs are row indices."""
    gen = _generator()
    phi = torch.randn(8, 3, 6, generator=gen)
    phi[phi.abs() < 0.5] = 0.0
    offset = torch.randn(8, 3, generator=gen)
    stored = {
        "dense": lambda: phi,
        "coo": lambda: phi.reshape(24, 6).to_sparse_coo(),
        "csr": lambda: _csr(phi.reshape(24, 6)),
    }[layout]()
    op = MatrixFeatures(stored, n_outputs=3, offset=offset)

    def model(x: Tensor, p: Tensor) -> Tensor:
        return offset[x] + phi[x] @ p

    return Instance(op, torch.tensor(rows), model, torch.zeros(6))


def scaled(inner: Instance) -> Instance:
    """``J diag(s)``: the model ``g(x, s ⊙ θ̃)`` at ``θ̃ = θ*/s``."""
    scale = torch.rand(inner.op.n_params, generator=_generator(2)) + 0.5
    return Instance(
        ScaledFeatures(inner.op, scale),
        inner.x,
        lambda x, p: inner.model(x, scale * p),
        inner.p0 / scale,
    )


def projected(inner: Instance, rank: int = 4) -> Instance:
    """``J Vᵀ`` on orthonormal rows ``V``: the model ``g(x, θ* + Vᵀ β)`` at ``β = 0``."""
    gaussian = torch.randn(inner.op.n_params, rank, generator=_generator(3))
    basis = torch.linalg.qr(gaussian).Q.T  # [K, D]
    return Instance(
        ProjectedFeatures(inner.op, basis),
        inner.x,
        lambda x, p: inner.model(x, inner.p0 + p @ basis),
        torch.zeros(rank),
    )


def random_output_map(inner: Instance, n_out: int = 4) -> Instance:
    """``A J`` for a dense random ``A`` ``[C_out, C_in]``."""
    n_in = inner.op.forward(inner.x[:1]).shape[-1]
    a = torch.randn(n_out, n_in, generator=_generator(4))
    op = OutputMap(inner.op, lambda f: f @ a.T, lambda u: u @ a)
    return Instance(op, inner.x, lambda x, p: inner.model(x, p) @ a.T, inner.p0)


def ray_output_map(inner: Instance) -> Instance:
    """``A J`` for the (sparse CSR) ray transform of 4×4 images at 3 angles, as the DIP uses it."""
    ray = RayTransform(4, 3, dtype=torch.float64)  # m = 12
    a = ray.matrix.to_dense()  # the oracle: [12, 16]
    op = OutputMap(inner.op, *observation_map(ray))
    return Instance(op, inner.x, lambda x, p: inner.model(x, p) @ a.T, inner.p0)


BATCHINGS = ("loop", "vmap", "jacobian", "auto")
FACTORIES: dict[str, Callable[[], Instance]] = {
    **{f"mlp-{b}": (lambda b=b: linearised_mlp(b)) for b in BATCHINGS},
    **{f"cnn-{b}": (lambda b=b: linearised_cnn(b)) for b in BATCHINGS},
    "matrix-dense-consecutive": lambda: matrix("dense", [2, 3, 4, 5, 6]),
    "matrix-dense-scattered": lambda: matrix("dense", [7, 0, 3, 3, 1]),
    "matrix-coo": lambda: matrix("coo", [7, 0, 3, 3, 1]),
    "matrix-csr": lambda: matrix("csr", [2, 3, 4, 5, 6]),
    "scaled-mlp": lambda: scaled(linearised_mlp("loop")),
    "scaled-matrix": lambda: scaled(matrix("dense", [7, 0, 3, 3, 1])),
    "projected-mlp": lambda: projected(linearised_mlp("vmap")),
    "projected-cnn": lambda: projected(linearised_cnn("auto")),
    "output-map-mlp": lambda: random_output_map(linearised_mlp("auto")),
    "output-map-ray": lambda: ray_output_map(image_network()),
    # the stack a method builds, _transform(ScaledFeatures(_observed())), with Nyström's transform
    "projected-scaled-ray": lambda: projected(scaled(ray_output_map(image_network()))),
}


@pytest.fixture(params=list(FACTORIES))
def inst(request) -> Instance:
    return FACTORIES[request.param]()


# --- helpers ---------------------------------------------------------------------------------


def _probes(inst: Instance, k: int, x: Tensor | None = None, seed: int = 5):
    """Random tangents ``[K, D]`` and cotangents ``[K, N, C]`` for the batch ``x``."""
    x = inst.x if x is None else x
    n, c = inst.op.forward(x).shape
    gen = _generator(seed + k)
    return torch.randn(k, inst.op.n_params, generator=gen), torch.randn(k, n, c, generator=gen)


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[:2], x[2:]  # 2 + 3 rows


# --- checks ----------------------------------------------------------------------------------


def test_shapes_dtypes_and_attributes(inst):
    op, x = inst.op, inst.x
    n = x.shape[0]
    f0 = op.forward(x)
    c, d = f0.shape[1], op.n_params
    assert f0.shape == (n, c)
    assert op.to_dense(x).shape == (n, c, d)
    for k in N_TANGENTS:
        v, u = _probes(inst, k)
        f0_jvp, jv = op.jvp(x, v)
        f0_pull, pull = op.pullback(x)
        assert f0_jvp.shape == f0_pull.shape == (n, c)
        assert jv.shape == (k, n, c)
        assert pull(u).shape == op.vjp(x, u).shape == (k, d)
    assert op.per_example_vjp(x, u[0]).shape == (n, d)
    outputs = [f0, jv, pull(u), op.per_example_vjp(x, u[0]), op.to_dense(x)]
    assert all(t.dtype == op.dtype == torch.float64 for t in outputs)
    assert all(t.device == op.device for t in outputs)


def test_forward_and_to_dense_are_the_model_and_its_jacobian(inst):
    op, x = inst.op, inst.x
    dense = inst.dense(x)
    assert dense.shape[-1] == op.n_params
    torch.testing.assert_close(op.forward(x), inst.model(x, inst.p0), **CLOSE)
    torch.testing.assert_close(op.to_dense(x), dense, **CLOSE)


def test_jvp_vjp_and_pullback_are_products_with_to_dense(inst):
    op, x = inst.op, inst.x
    dense, f0 = op.to_dense(x), op.forward(x)
    for k in N_TANGENTS:
        v, u = _probes(inst, k)
        f0_jvp, jv = op.jvp(x, v)
        f0_pull, pull = op.pullback(x)
        torch.testing.assert_close(f0_jvp, f0, **CLOSE)
        torch.testing.assert_close(f0_pull, f0, **CLOSE)
        torch.testing.assert_close(jv, torch.einsum("ncd,kd->knc", dense, v), **CLOSE)
        expected = torch.einsum("ncd,knc->kd", dense, u)
        torch.testing.assert_close(pull(u), expected, **CLOSE)
        torch.testing.assert_close(op.vjp(x, u), expected, **CLOSE)


def test_pullback_is_the_adjoint_of_jvp(inst):
    """``⟨J v, u⟩ = ⟨v, Jᵀ u⟩`` for each of ``K`` random pairs, to float64 round-off."""
    op, x = inst.op, inst.x
    for k in N_TANGENTS:
        v, u = _probes(inst, k)
        jv, jtu = op.jvp(x, v)[1], op.vjp(x, u)
        left, right = (jv * u).sum((1, 2)), (v * jtu).sum(1)
        scale = jv.flatten(1).norm(dim=1) * u.flatten(1).norm(dim=1)
        assert ((left - right).abs() <= 1e-12 * scale).all(), (left, right)


def test_per_example_vjp_is_rows_of_to_dense(inst):
    op, x = inst.op, inst.x
    dense = inst.dense(x)
    u = _probes(inst, 1)[1][0]  # [N, C]
    torch.testing.assert_close(
        op.per_example_vjp(x, u), torch.einsum("ncd,nc->nd", dense, u), **CLOSE
    )
    # and summed over the points it is the batch's VJP
    torch.testing.assert_close(op.per_example_vjp(x, u).sum(0), op.vjp(x, u[None])[0], **CLOSE)


def test_a_batch_is_its_two_halves_concatenated(inst):
    op, x = inst.op, inst.x
    first, second = _halves(x)
    for k in N_TANGENTS:
        v, u = _probes(inst, k)
        u1, u2 = _halves(u.transpose(0, 1))
        jv = op.jvp(x, v)[1]
        halves = torch.cat([op.jvp(first, v)[1], op.jvp(second, v)[1]], dim=1)
        torch.testing.assert_close(jv, halves, **CLOSE)
        vjp_halves = op.vjp(first, u1.transpose(0, 1)) + op.vjp(second, u2.transpose(0, 1))
        torch.testing.assert_close(op.vjp(x, u), vjp_halves, **CLOSE)
    for method in (op.forward, op.to_dense):
        torch.testing.assert_close(method(x), torch.cat([method(first), method(second)]), **CLOSE)
    w = u[0]
    per_example = torch.cat([op.per_example_vjp(first, w[:2]), op.per_example_vjp(second, w[2:])])
    torch.testing.assert_close(op.per_example_vjp(x, w), per_example, **CLOSE)


def _everything(op: FeatureOperator, x: Tensor, v: Tensor, u: Tensor) -> list[Tensor]:
    f0, jv = op.jvp(x, v)
    f0_pull, pull = op.pullback(x)
    return [
        op.forward(x),
        f0,
        jv,
        f0_pull,
        pull(u),
        op.vjp(x, u),
        op.per_example_vjp(x, u[0]),
        op.to_dense(x),
    ]


@pytest.mark.parametrize("k", N_TANGENTS)
def test_results_are_bit_identical_when_called_again(inst, k):
    """Twice on the same batch (which may hit a cache) and on a copy of it (which may not).

    After a first round of every call: ``tangent_batching="auto"`` settles on loop or vmap at
    its first call with several tangents (``ProjectedFeatures.to_dense`` makes one), and the two
    may differ in the last bits for several tangents (a single one always takes the loop).
    """
    op, x = inst.op, inst.x
    v, u = _probes(inst, k)
    _everything(op, x, *_probes(inst, 2))
    first = _everything(op, x, v, u)
    for again in (_everything(op, x, v, u), _everything(op, x.clone(), v.clone(), u.clone())):
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


def test_auto_batching_does_not_change_the_bits_of_a_single_tangent(monkeypatch):
    inst = linearised_cnn("auto")
    op, x = inst.op, inst.x
    v, u = _probes(inst, 1)
    before = op.jvp(x, v)[1], op.vjp(x, u)
    monkeypatch.setattr(Linearisation, "_fastest_batching", lambda self, x, tangents: "vmap")
    op.jvp(x, _probes(inst, 2)[0])  # 2 < C tangents: timed, and (here) vmap wins
    after = op.jvp(x, v)[1], op.vjp(x, u)
    torch.testing.assert_close(after, before, **CLOSE)  # same to round-off ...
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))  # ... not in bits


@pytest.mark.parametrize("make", [linearised_cnn, linearised_mlp], ids=["cnn", "mlp"])
def test_empty_batches_and_zero_tangents_give_empty_results(make):
    inst = make("auto")
    op, x = inst.op, inst.x
    op.forward(x)  # C is known from a first non-empty batch
    d, c = op.n_params, op.forward(x).shape[1]
    empty = x[:0]
    assert op.forward(empty).shape == (0, c)
    assert op.jvp(empty, torch.randn(3, d))[1].shape == (3, 0, c)
    assert op.jvp(x, torch.zeros(0, d))[1].shape == (0, len(x), c)
    assert op.vjp(x, torch.zeros(0, len(x), c)).shape == (0, d)
    assert op.to_dense(empty).shape == (0, c, d)
    assert op.per_example_vjp(empty, torch.zeros(0, c)).shape == (0, d)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_matrix_features_take_an_empty_batch(layout):
    matrix = torch.randn(8, 3)
    matrix = matrix.to_sparse_coo() if layout == "coo" else matrix.to_sparse_csr()
    op = MatrixFeatures(matrix, n_outputs=2)
    empty = torch.tensor([], dtype=torch.long)
    assert op.to_dense(empty).shape == (0, 2, 3)
    assert op.jvp(empty, torch.randn(4, 3))[1].shape == (4, 0, 2)
