import copy
import json

import pytest
import torch
from torch.func import functional_call, jacrev

pytest.importorskip("transformers")
pytest.importorskip("peft")

import linearised_laplace as lla  # noqa: E402
from linearised_laplace import cli  # noqa: E402
from linearised_laplace.experiments import lora, peers  # noqa: E402

QUIET = {"progress": False}


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def _tiny_lora_bert():
    """A 1-layer BERT with rank-2 adapters, the adapters moved off their zero start (as if tuned)."""
    settings = lora.LoraSettings(vocab=10, hidden=8, layers=1, heads=2, length=6, rank=2)
    net = lora.with_lora(lora.bert(settings), settings.rank, seed=0).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = lora.sequences(20, settings.length, settings.vocab, g)
    return net, x, lora.labels(x, settings.vocab, "finetune", g)


def _dense_covariance(net, x_train, x_test, alpha):
    """``J* (Σ_i J_iᵀ B_i J_i + α I)^{-1} J*ᵀ`` from jacrev over the trainable parameters."""
    model = copy.deepcopy(net).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def jacobian(x):
        def f(theta):
            return functional_call(model, {**params, **theta}, (x,)).logits

        jac = jacrev(f)({n: params[n] for n in names})
        return torch.cat([jac[n].flatten(start_dim=2) for n in names], dim=-1)

    jac = jacobian(x_train)
    probs = torch.softmax(model(x_train).logits, -1)
    hessians = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    precision = torch.einsum("ncd,nce,nef->df", jac, hessians, jac)
    covariance = torch.linalg.inv(precision + alpha * torch.eye(len(precision)))
    jac_test = jacobian(x_test)
    return torch.einsum("ncd,de,nke->nck", jac_test, covariance, jac_test), len(names)


def test_exact_laplace_over_adapters_and_head_matches_the_dense_posterior():
    net, x, y = _tiny_lora_bert()
    state = copy.deepcopy(net.state_dict())
    la = lla.ExactLaplace(net, parameters=lora.ADAPTERS, prior_precision=3.0, **QUIET)
    la.fit((x, y))
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert list(la.linearisation.selection.names) == names  # the adapters and the head's copy
    assert any("lora_A" in n for n in names) and any("modules_to_save" in n for n in names)
    expected, n_names = _dense_covariance(net, x, x[:5], alpha=3.0)
    assert n_names == len(names)
    torch.testing.assert_close(la.functional_variance(x[:5]), expected, rtol=1e-6, atol=1e-10)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key  # the model is not modified


def test_sampled_laplace_over_adapters_matches_the_exact_samples():
    net, x, y = _tiny_lora_bert()
    # one sample (K < C): matrix-free JVPs through BERT's attention, not a Jacobian
    kw = {"parameters": lora.ADAPTERS, "prior_precision": 3.0, "n_samples": 1, "seed": 2, **QUIET}
    exact = lla.ExactLaplace(net, **kw).fit((x, y))
    with pytest.warns(UserWarning, match="does not support forward-mode AD"):  # the VJP fallback
        cg = lla.SampledLaplace(net, solver=lla.CG(rtol=1e-12), feature_memory_gib=0, **kw)
        cg.fit((x, y))
    sgd = lla.SampledLaplace(net, solver=lla.SGD(n_epochs=200), **kw).fit((x, y))
    assert _relative(cg.posterior_samples, exact.posterior_samples) < 1e-8
    assert _relative(sgd.posterior_samples, exact.posterior_samples) < 0.05
    torch.testing.assert_close(cg.predictive_samples(x[:4]), exact.predictive_samples(x[:4]))


def test_tasks_are_seeded_and_shifted():
    settings = lora.LoraSettings.smoke_test("unused")
    data, again = lora.make_data(settings), lora.make_data(settings)
    for name, (x, y) in data.items():
        assert torch.equal(x, again[name][0]) and torch.equal(y, again[name][1]), name
        assert (x[:, 0] == 0).all() and (x[:, 1:] > 0).all() and (x < settings.vocab).all()
    assert data["longer"][0].shape[1] == 2 * settings.length + 1
    low = settings.vocab // 4
    share = {name: float((data[name][0][:, 1:] <= low).double().mean()) for name in data}
    assert share["skewed tokens"] > share["in-distribution"] + 0.1  # low tokens are more frequent
    with pytest.raises(ValueError, match="Unknown method.*choose from"):
        lora.LoraSettings(methods=("nope",))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Smoke settings whose MAP is trained once for the module."""
    settings = lora.LoraSettings.smoke_test(str(tmp_path_factory.mktemp("lora")))
    lora.fine_tuned(settings, lora.make_data(settings), settings.seed)
    return settings


@pytest.mark.parametrize("method", lora.METHODS)
def test_every_method_is_scored_on_every_test_set(smoke, method):
    if method.startswith("lt-") and not peers.available():
        pytest.skip("laplace-torch is not installed")
    result = lora.evaluate(method, smoke)
    assert set(result["test sets"]) == set(lora.TEST_SETS)
    for scores in result["test sets"].values():
        assert 0 <= scores["accuracy"] <= 1 and scores["NLL"] > 0 and 0 <= scores["ECE"] <= 1
        assert scores["joint LL κ=1"] == pytest.approx(-scores["NLL"], rel=1e-9)
    if method in ("sampled", "exact"):
        adapters = lora.fine_tuned(smoke, lora.make_data(smoke), smoke.seed)
        trainable = sum(p.numel() for p in adapters.parameters() if p.requires_grad)
        assert result["linearised weights"] == trainable
        assert len(result["em_history"]) > 1


def test_smoke_cli_writes_the_tables_and_caches_the_methods(smoke, capsys):
    args = ["benchmark", "lora", "--smoke", "--out", smoke.out, "--methods", "map", "exact"]
    assert cli.main(args) == 0
    text = (lora.Path(smoke.out) / "results.md").read_text()
    for name in (*lora.TEST_SETS, "Fit"):
        assert f"## {name}" in text
    assert "| exact |" in text and "| map |" in text and "did not run" not in text
    report = json.loads((lora.Path(smoke.out) / "results.json").read_text())
    assert [r["method"] for r in report["results"]] == ["map", "exact"]
    marker = lora.Path(smoke.out) / "methods" / "map.json"
    cached = json.loads(marker.read_text())
    cached["NLL"] = 123.0  # a rerun would overwrite it
    marker.write_text(json.dumps(cached))
    assert cli.main([*args[:-1]]) == 0  # map only
    assert json.loads(marker.read_text())["NLL"] == 123.0
    assert "in-distribution" in capsys.readouterr().out
