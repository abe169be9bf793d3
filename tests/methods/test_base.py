"""Inputs and outputs as the ecosystem has them, through the public methods (issue 19)."""

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import linearised_laplace as lla

from ..cases import KeywordInputs, PackedInputs, packed, token_core, token_data

QUIET = {"progress": False}
METHODS = {
    "exact": lambda net: lla.ExactLaplace(net, n_samples=4, seed=3, **QUIET),
    "sampled": lambda net: lla.SampledLaplace(
        net, n_samples=4, seed=3, solver=lla.CG(max_iter=3), **QUIET
    ),
    "subnetwork": lambda net: lla.SubnetworkLaplace(
        net, n_params=10, swag_epochs=2, n_samples=4, seed=3, **QUIET
    ),
    "nystrom": lambda net: lla.NystromLaplace(net, rank=8, n_samples=4, seed=3, **QUIET),
}
CLOSE = {"rtol": 1e-10, "atol": 1e-12}


def _tuple(x):
    return tuple(x.values())


def _variants():
    """(name, model, inputs transform): the same network with tensor, tuple and dict inputs."""
    core = token_core()
    return {
        "tensor": (PackedInputs(core), packed),
        "tuple": (KeywordInputs(core), _tuple),
        "dict": (KeywordInputs(core), lambda x: x),
    }


def _predictions(la, x):
    return {
        "samples": la.posterior_samples,
        "predictive": la.predictive_samples(x),
        "variance": la.functional_variance(x),
        "probit": la(x, link_approx="probit"),
    }


@pytest.mark.filterwarnings("ignore::linearised_laplace.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
def test_tuple_and_dict_inputs_give_the_tensor_inputs_results(method):
    x, y = token_data()
    test = token_data(5, seed=2)[0]
    results = {}
    for name, (net, form) in _variants().items():
        la = METHODS[method](net).fit((form(x), y))
        results[name] = _predictions(la, form(test))
    for name in ("tuple", "dict"):
        for key, value in results[name].items():
            torch.testing.assert_close(value, results["tensor"][key], **CLOSE, msg=key)


@pytest.mark.filterwarnings("ignore::linearised_laplace.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
def test_the_fitted_prior_is_the_same_for_every_input_type(method):
    x, y = token_data()
    options = {"n_em_samples": 2} if method == "sampled" else {}
    priors = {}
    for name, (net, form) in _variants().items():
        la = METHODS[method](net)
        la.optimize_prior_precision((form(x), y), max_iter=2, **options)
        priors[name] = la.prior_precision
    torch.testing.assert_close(priors["dict"], priors["tensor"], **CLOSE)
    torch.testing.assert_close(priors["tuple"], priors["tensor"], **CLOSE)


class _HuggingFaceItems(Dataset):
    """Items as a tokenised Hugging Face dataset yields them: a dict with ``labels``."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.x.items()}, "labels": self.y[i]}


class _BatchEncoding(dict):
    """Stands in for transformers' ``BatchEncoding``: a dict subclass with attribute access."""

    __getattr__ = dict.__getitem__


def _collate(items):
    return _BatchEncoding(torch.utils.data.default_collate(items))


@pytest.mark.parametrize("collate", [None, _collate])
def test_hugging_face_dict_batches_with_labels(collate):
    x, y = token_data()
    core = token_core()
    # the model's forward has no `labels`: passing them would raise
    loader = DataLoader(_HuggingFaceItems(x, y), batch_size=7, collate_fn=collate)
    la = METHODS["exact"](KeywordInputs(core)).fit(loader)
    tensor = METHODS["exact"](PackedInputs(core)).fit((packed(x), y))
    test = token_data(5, seed=2)[0]
    torch.testing.assert_close(la.posterior_samples, tensor.posterior_samples, **CLOSE)
    torch.testing.assert_close(
        la.functional_variance(_BatchEncoding(test)), tensor.functional_variance(packed(test))
    )


@dataclass
class _Output:
    """An object with ``.logits`` that is not a mapping."""

    loss: object
    logits: torch.Tensor


class _ModelOutput(OrderedDict):
    """Like transformers' ``ModelOutput``: an ordered dict whose keys are also attributes."""

    def __getattr__(self, name):
        return self[name]


OUTPUTS = {
    "tuple": lambda f: (f, f.detach() * 0),
    "list": lambda f: [f],
    "dict with logits": lambda f: {"hidden": f * 2, "logits": f},
    "dict": lambda f: {"scores": f, "hidden": f * 2},
    "object with logits": lambda f: _Output(None, f),
    "ModelOutput": lambda f: _ModelOutput(logits=f, hidden_states=(f,)),
    "nested": lambda f: (_ModelOutput(logits=f),),
}


@pytest.mark.parametrize("kind", OUTPUTS)
def test_output_types_give_the_tensor_outputs_results(kind):
    x, y = token_data()
    test = token_data(5, seed=2)[0]
    core = token_core()
    plain = METHODS["exact"](KeywordInputs(core)).fit((x, y))
    wrapped = METHODS["exact"](KeywordInputs(core, OUTPUTS[kind])).fit((x, y))
    expected, got = _predictions(plain, test), _predictions(wrapped, test)
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], **CLOSE, msg=key)


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        (lambda x: [x["input_ids"], "mask"], TypeError, r"must be a Tensor \[N, \.\.\.\]"),
        (lambda x: {}, TypeError, "that is empty"),
        (lambda x: {0: x["extra"]}, TypeError, "must be strings"),
        (lambda x: {**x, "extra": x["extra"][:2]}, ValueError, "the same N rows"),
        (
            lambda x: {**x, "extra": x["extra"].float()},
            TypeError,
            r"\['extra'\] are torch\.float32",
        ),
        (lambda x: {**x, "extra": x["extra"] * torch.nan}, ValueError, r"`x`\['extra'\] contain"),
        (lambda x: {**x, "labels": x["extra"]}, TypeError, "cannot take `x`.*'labels'"),
        (lambda x: _tuple(x)[:2], TypeError, "cannot take `x`.*missing"),
        (lambda x: packed(x), TypeError, "cannot take `x`.*missing"),
    ],
)
def test_bad_prediction_inputs_raise_clearly(inputs, error, match):
    x, y = token_data()
    la = METHODS["exact"](KeywordInputs(token_core())).fit((x, y))
    with pytest.raises(error, match=match):
        la.predictive_samples(inputs(token_data(5, seed=2)[0]))


def test_bad_outputs_and_batches_raise_clearly():
    x, y = token_data()
    with pytest.raises(TypeError, match="must return a Tensor .* got str"):
        METHODS["exact"](KeywordInputs(token_core(), lambda f: "logits")).fit((x, y))
    loader = DataLoader(_Unlabelled(x, y), batch_size=4)
    with pytest.raises(TypeError, match="targets under 'labels'.*'label' → 'labels'"):
        METHODS["exact"](KeywordInputs(token_core())).fit(loader)


class _Unlabelled(_HuggingFaceItems):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["label"] = item.pop("labels")
        return item


def test_validation_grid_search_takes_dict_inputs():
    (x, y), (val, val_y) = token_data(), token_data(10, seed=4)
    grid = torch.logspace(-2, 2, 5)
    results = [
        METHODS["exact"](net).fit((form(x), y)).select_prior_precision((form(val), val_y), grid)
        for net, form in _variants().values()
    ]
    for result in results[1:]:
        torch.testing.assert_close(torch.tensor(result["nll"]), torch.tensor(results[0]["nll"]))
        assert result["prior_precision"] == results[0]["prior_precision"]
