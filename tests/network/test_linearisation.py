import warnings

import pytest
import torch
from torch import nn

from linearised_laplace import Linearisation, reference
from linearised_laplace.network.modules import lacks_forward_ad

from ..cases import (
    KeywordInputs,
    PackedInputs,
    classification_data,
    cnn,
    image_data,
    mlp,
    packed,
    token_core,
    token_data,
    transformer_classifier,
    warm_batchnorm,
)


def _dense_reference(net, x, lin):
    jac = reference.jacobian(net, x, list(lin.selection.names))
    return jac if lin.selection.indices is None else jac[..., lin.selection.indices]


def _check_products(net, x, lin, rtol=1e-10):
    jac = _dense_reference(net, x, lin)  # [N, C, D]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(3, lin.n_params, generator=gen).to(jac.dtype)
    u = torch.randn(3, *jac.shape[:2], generator=gen).to(jac.dtype)
    close = {"rtol": rtol, "atol": rtol * 1e-2}
    f0, jv = lin.jvp(x, v)
    torch.testing.assert_close(f0, net.eval()(x), **close)
    torch.testing.assert_close(jv, torch.einsum("ncd,kd->knc", jac, v), **close)
    torch.testing.assert_close(lin.vjp(x, u), torch.einsum("ncd,knc->kd", jac, u), **close)
    per_example = lin.per_example_vjp(x, u[0])
    torch.testing.assert_close(per_example, torch.einsum("ncd,nc->nd", jac, u[0]), **close)
    torch.testing.assert_close(lin.to_dense(x), jac, **close)
    torch.testing.assert_close(lin.linearised_forward(x, v), f0 + jv)
    torch.testing.assert_close(lin.linearised_forward(x, v, chunk=2), f0 + jv, **close)


@pytest.mark.parametrize("batching", ["loop", "vmap", "auto", "jacobian"])
@pytest.mark.parametrize(
    "parameters", ["all", "last_layer", ["0.weight", "*.bias"], torch.tensor([36, 2, 17, 0])]
)
def test_mlp_products_match_jacrev(parameters, batching):
    net = mlp()
    x, _ = classification_data(7)
    lin = Linearisation(net, parameters, tangent_batching=batching)
    _check_products(net, x, lin)


@pytest.mark.parametrize("exclude_norm", [False, True])
def test_cnn_with_batchnorm_on_running_statistics(exclude_norm):
    x, _ = image_data(7)
    net = warm_batchnorm(cnn(), x)
    lin = Linearisation(net, exclude_norm=exclude_norm)
    assert ("1.weight" in lin.selection.names) != exclude_norm
    _check_products(net, x, lin)
    _check_products(
        net, x, Linearisation(net, exclude_norm=exclude_norm, tangent_batching="jacobian")
    )


def test_linear_model_jacobian_is_the_design_matrix():
    net = nn.Linear(4, 1, bias=False)
    x = torch.randn(6, 4)
    lin = Linearisation(net)
    torch.testing.assert_close(lin.to_dense(x)[:, 0], x)
    v = torch.randn(2, 4)
    torch.testing.assert_close(
        lin.linearised_forward(x, v), (x @ (net.weight.detach()[0] + v).T).T[..., None]
    )


def _check_fallback(net, x, rtol, dtype):
    lin = Linearisation(net)
    with pytest.warns(UserWarning, match="does not support forward-mode AD"):
        lin.jvp(x, torch.randn(1, lin.n_params, dtype=dtype))
    assert lin.forward_ad is False
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*forward-mode AD")  # warned once only
        _check_products(net, x, lin, rtol=rtol)


def test_transformer_fast_path_falls_back_to_double_vjp():
    net = transformer_classifier().eval()
    _check_fallback(net, torch.randn(5, 6, 8), rtol=1e-9, dtype=torch.float64)


def test_lstm_on_cpu_falls_back_to_double_vjp():
    # float32 LSTMs run the oneDNN kernel, which has no forward-mode derivative.
    torch.manual_seed(0)
    net = nn.Sequential(_LastStep(nn.LSTM(4, 5, batch_first=True)), nn.Linear(5, 3)).float()
    _check_fallback(net, torch.randn(5, 6, 4, dtype=torch.float32), rtol=1e-4, dtype=torch.float32)


class _LastStep(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0][:, -1]


def test_eval_mode_is_used_and_train_flags_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    net[2].eval()  # a mixed state that must survive exactly
    x = torch.randn(5, 3)
    lin = Linearisation(net)
    out1, out2 = lin.forward(x), lin.forward(x)
    torch.testing.assert_close(out1, out2)  # dropout off
    assert net.training and net[1].training and not net[2].training


def test_snapshot_of_parameters_is_private():
    net = mlp()
    x, _ = classification_data(4)
    lin = Linearisation(net)
    before = lin.forward(x)
    with torch.no_grad():
        net[0].weight.add_(1.0)  # the user keeps training: the linearisation point stays put
    torch.testing.assert_close(lin.forward(x), before)


class _Returns(nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output, self.linear = output, nn.Linear(3, 2)

    def forward(self, x):
        return self.output


@pytest.mark.parametrize(
    ("net", "x", "error", "match"),
    [
        (nn.Linear(3, 2), [[1.0, 2.0, 3.0]], TypeError, "`x` must be a Tensor"),
        (
            nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)),
            torch.randn(4, 3),
            ValueError,
            r"shape \[N, C\]",
        ),
        (
            nn.LSTM(3, 2),
            torch.randn(4, 1, 3),
            ValueError,
            r"shape \[N, C\] = \[4, C\], got \[4, 1, 2\]",
        ),
        (_Returns(None), torch.randn(4, 3), TypeError, "must return a Tensor .* got NoneType"),
    ],
)
def test_bad_outputs_and_inputs_raise(net, x, error, match):
    with pytest.raises(error, match=match):
        Linearisation(net).forward(x)


def test_bad_tangent_batching_raises():
    with pytest.raises(ValueError, match="'auto', 'loop', 'vmap' or 'jacobian'"):
        Linearisation(mlp(), tangent_batching="fast")


def test_auto_batching_keeps_the_faster_way_once_it_has_several_tangents(monkeypatch):
    lin = Linearisation(mlp())
    x, _ = classification_data(7)
    lin.jvp(x, torch.randn(1, lin.n_params))
    assert lin.batching is None  # one tangent: nothing to choose
    calls = []
    original = Linearisation._fastest_batching

    def spy(self, x, tangents):
        calls.append(tangents.shape[0])
        return original(self, x, tangents)

    monkeypatch.setattr(Linearisation, "_fastest_batching", spy)
    lin.jvp(x, torch.randn(2, lin.n_params))  # fewer than C = 3 tangents: no Jacobian path
    lin.jvp(x, torch.randn(2, lin.n_params))
    assert calls == [2] and lin.batching in ("loop", "vmap")


def test_auto_takes_the_jacobian_path_for_c_tangents_or_more_and_it_matches_jacrev(monkeypatch):
    net = mlp()  # C = 3
    x, _ = classification_data(7)
    lin = Linearisation(net)
    built = []
    monkeypatch.setattr(lin, "to_dense", lambda x, f=lin.to_dense: built.append(1) or f(x))
    jac = _dense_reference(net, x, lin)
    for k, dense in ((2, False), (3, True), (8, True)):
        built.clear()
        v, u = torch.randn(k, lin.n_params), torch.randn(k, 7, 3)
        f0, jv = lin.jvp(x, v)
        _, pull = lin.pullback(x)
        torch.testing.assert_close(jv, torch.einsum("ncd,kd->knc", jac, v))
        torch.testing.assert_close(pull(u), torch.einsum("ncd,knc->kd", jac, u))
        torch.testing.assert_close(f0, net(x))
        assert bool(built) == (dense and k == 3)  # built once, then reused for the same batch
    x += 1.0  # the cached batch changed in place: its Jacobian is not reused
    torch.testing.assert_close(
        lin.jvp(x, v)[1], torch.einsum("ncd,kd->knc", _dense_reference(net, x, lin), v)
    )
    monkeypatch.setattr("linearised_laplace.network.linearisation.JACOBIAN_BYTES", 0)
    built.clear()
    lin.jvp(x.clone(), v)
    assert not built  # too large: the tangents go through JVPs


# ---------------------------------------------------------------- tuple and dict inputs
@pytest.mark.parametrize("batching", ["loop", "vmap", "auto", "jacobian"])
@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_tuple_and_dict_input_products_match_jacrev(form, batching):
    core = token_core()
    x, _ = token_data(7)
    tree = tuple(x.values()) if form == "tuple" else x
    lin = Linearisation(KeywordInputs(core), tangent_batching=batching)
    jac = reference.jacobian(PackedInputs(core), packed(x))  # jacrev on the tensor-input twin
    _check_tree_products(KeywordInputs(core), tree, lin, jac)


def _check_tree_products(net, x, lin, jac, rtol=1e-10):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(3, lin.n_params, generator=gen)
    u = torch.randn(3, *jac.shape[:2], generator=gen)
    close = {"rtol": rtol, "atol": rtol * 1e-2}
    f0, jv = lin.jvp(x, v)
    torch.testing.assert_close(f0, net.eval()(**x) if isinstance(x, dict) else net.eval()(*x))
    torch.testing.assert_close(jv, torch.einsum("ncd,kd->knc", jac, v), **close)
    torch.testing.assert_close(lin.vjp(x, u), torch.einsum("ncd,knc->kd", jac, u), **close)
    per_example = lin.per_example_vjp(x, u[0])
    torch.testing.assert_close(per_example, torch.einsum("ncd,nc->nd", jac, u[0]), **close)
    torch.testing.assert_close(lin.to_dense(x), jac, **close)
    torch.testing.assert_close(lin.linearised_forward(x, v, chunk=2), f0 + jv, **close)


class _TanhWithoutJvp(torch.autograd.Function):
    """``tanh`` with a backward but no forward-mode derivative (like fused attention on CPU)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.tanh()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _ReraisedAs(nn.Module):
    """Re-raises the forward-AD error as its own, as a library wrapping attention might."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, **x):
        try:
            return self.net(**x)
        except NotImplementedError as err:
            raise RuntimeError("attention kernel failed") from err


def _without_jvp(core):
    core.head[1] = _Apply(_TanhWithoutJvp.apply)
    return core


class _Apply(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("reraised", [False, True])
def test_dict_input_model_without_forward_ad_falls_back_to_double_vjp(reraised):
    core = _without_jvp(token_core())
    x, _ = token_data(6)
    net = _ReraisedAs(KeywordInputs(core)) if reraised else KeywordInputs(core)
    lin = Linearisation(net)
    with pytest.warns(UserWarning, match="does not support forward-mode AD"):
        lin.jvp(x, torch.randn(1, lin.n_params))
    assert lin.forward_ad is False
    reference_core = token_core()  # the same weights, with the ordinary tanh
    jac = reference.jacobian(PackedInputs(reference_core), packed(x))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*forward-mode AD")  # warned once only
        _check_tree_products(net, x, lin, jac)


@pytest.mark.parametrize(
    ("message", "lacks"),
    [
        (
            "Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu that does "
            "not support it because it has not been implemented yet.",
            True,
        ),
        (
            "You must implement the jvp function for custom autograd.Function to use it with "
            "forward mode AD.",
            True,
        ),
        ("jvp is not implemented for this operator", True),
        ("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)", False),
        ("derivative for aten::grid_sampler_2d_backward is not implemented", False),
        ("The size of tensor a (3) must match the size of tensor b (4)", False),
    ],
)
def test_only_errors_of_missing_forward_ad_count_as_such(message, lacks):
    assert lacks_forward_ad(NotImplementedError(message)) is lacks
    try:
        try:
            raise NotImplementedError(message)
        except NotImplementedError as err:
            raise RuntimeError("the model's own wrapper failed") from err
    except RuntimeError as wrapped:
        assert lacks_forward_ad(wrapped) is lacks


def test_other_errors_in_forward_ad_are_raised():
    class _JvpFails(_TanhWithoutJvp):
        @staticmethod
        def jvp(ctx, tangent):
            raise RuntimeError("The size of tensor a (3) must match the size of tensor b (4)")

    core = token_core()
    core.head[1] = _Apply(_JvpFails.apply)
    lin = Linearisation(KeywordInputs(core))
    x, _ = token_data(6)
    with pytest.raises(RuntimeError, match="must match the size"):
        lin.jvp(x, torch.randn(1, lin.n_params))
