"""Inputs and outputs as the ecosystem has them, through the public methods (issue 19)."""

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import linearised_laplace as lla
from linearised_laplace import reference

from ..cases import (
    KeywordInputs,
    PackedInputs,
    classification_data,
    mlp,
    packed,
    regression_data,
    token_core,
    token_data,
)

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


# ---------------------------------------------- laplace-torch's σ setter, statistics, diagonal_output
REGRESSION = {
    "exact": lambda net, **kw: lla.ExactLaplace(net, "regression", **kw),
    "subnetwork": lambda net, **kw: lla.SubnetworkLaplace(
        net, "regression", subnetwork=torch.tensor([0, 4, 9, 17, 20, 26, 31]), **kw
    ),
    "nystrom": lambda net, **kw: lla.NystromLaplace(net, "regression", rank=6, **kw),
}
FIT = {"prior_precision": 0.7, "n_samples": 4, "seed": 2, **QUIET}


def _fitted_outputs(la, x):
    """What a fit yields, for comparing two fits: the predictive, the samples and the evidence."""
    mean, var = la(x)
    evidence = la.log_marginal_likelihood(mean="network")
    return {"mean": mean, "var": var, "samples": la.sample(), "evidence": evidence}


@pytest.mark.parametrize("method", REGRESSION)
def test_setting_sigma_noise_refits_as_constructing_with_it(method):
    net, (x, y) = mlp(n_out=2), regression_data(15)
    build = REGRESSION[method]
    la = build(net, sigma_noise=0.3, **FIT).fit((x, y))
    before = la(x)[1]
    la.sigma_noise = torch.tensor([0.72])
    assert (la(x)[1].diagonal(dim1=1, dim2=2) > before.diagonal(dim1=1, dim2=2)).all()
    expected = build(net, sigma_noise=0.72, **FIT).fit((x, y))
    torch.testing.assert_close(la.sigma_noise, torch.tensor(0.72))
    actual, wanted = _fitted_outputs(la, x), _fitted_outputs(expected, x)
    for name in wanted:
        torch.testing.assert_close(actual[name], wanted[name], **CLOSE, msg=name)


NEEDS_FIT = {
    "sampled": lambda net, **kw: lla.SampledLaplace(net, "regression", solver=lla.Cholesky(), **kw),
    "g_prior": lambda net, **kw: lla.ExactLaplace(net, "regression", g_prior=True, **kw),
    "loaded": lambda net, **kw: lla.ExactLaplace(net, "regression", **kw),
}


@pytest.mark.parametrize("kind", NEEDS_FIT)
def test_setting_sigma_noise_asks_for_a_fit_where_it_cannot_refit(kind, tmp_path):
    net, (x, y) = mlp(n_out=2), regression_data(15)
    la = NEEDS_FIT[kind](net, sigma_noise=0.3, **FIT).fit((x, y))
    if kind == "loaded":
        la.save(tmp_path / "fit.safetensors")
        la = lla.ExactLaplace.load(tmp_path / "fit.safetensors", net, progress=False)
    la.sigma_noise = 0.3  # unchanged: the fit stays
    la(x)
    la.sigma_noise = 0.72
    with pytest.raises(lla.NotFittedError, match=r"fitted at sigma_noise=0.3.*\.fit\("):
        la(x)
    expected = NEEDS_FIT[kind](net, sigma_noise=0.72, **FIT).fit((x, y))
    torch.testing.assert_close(la.fit((x, y)).sample(), expected.sample(), **CLOSE)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1.2", "must be a positive number"),
        (torch.ones(2), "only homoscedastic"),
        (torch.ones(1, 1), "only homoscedastic"),
        (-0.5, "finite and > 0"),
        (float("nan"), "finite and > 0"),
    ],
)
def test_sigma_noise_setter_rejects_what_is_not_one_positive_value(value, match):
    la = lla.ExactLaplace(mlp(n_out=2), "regression", **FIT)
    with pytest.raises(ValueError, match=match):
        la.sigma_noise = value
    with pytest.raises(ValueError, match=match):
        lla.ExactLaplace(mlp(n_out=2), "regression", sigma_noise=value)
    torch.testing.assert_close(la.sigma_noise, torch.tensor(1.0))


def test_sigma_noise_setter_takes_laplace_torchs_forms_and_classification_only_one():
    la = lla.ExactLaplace(mlp(n_out=2), "regression", **FIT)
    for value in [2, 0.5, torch.tensor(0.25), torch.tensor([0.125])]:
        la.sigma_noise = value
        torch.testing.assert_close(la.sigma_noise, torch.tensor(float(value)))
    net, (x, y) = mlp(), classification_data(12)
    classifier = lla.ExactLaplace(net, **FIT).fit((x, y))
    probs = classifier(x)
    with pytest.raises(ValueError, match="regression only"):
        classifier.sigma_noise = 1.2
    classifier.sigma_noise = torch.tensor(1.0)
    torch.testing.assert_close(classifier(x), probs)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_training_statistics_are_the_fits_data_at_the_networks_outputs(task):
    net = mlp(n_out=2 if task == "regression" else 3)
    x, y = (regression_data if task == "regression" else classification_data)(14)
    kw = {"sigma_noise": 0.3} if task == "regression" else {}
    la = lla.SampledLaplace(net, task, solver=lla.Cholesky(), **kw, **FIT)
    for name in ["n_data", "n_outputs", "log_likelihood"]:
        with pytest.raises(lla.NotFittedError, match="not fitted"):
            getattr(la, name)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=5))
    f = net(x).detach()
    assert (la.n_data, la.n_outputs) == (14, f.shape[1])
    if task == "classification":
        expected = torch.log_softmax(f, -1)[torch.arange(14), y].sum()
    else:
        expected = -0.5 * ((y - f) ** 2).sum() / 0.3**2 - 14 * 2 * torch.log(
            torch.tensor(0.3 * (2 * torch.pi) ** 0.5)
        )
    torch.testing.assert_close(la.log_likelihood, expected)


def test_prior_precision_diag_in_the_weights_coordinates():
    net, (x, y) = mlp(), classification_data(12)
    sizes = torch.tensor([15, 5, 15, 3])
    scalar = lla.ExactLaplace(net, prior_precision=0.7, **QUIET)
    torch.testing.assert_close(scalar.prior_precision_diag, torch.full((38,), 0.7))
    layerwise = lla.ExactLaplace(net, prior_precision=[1.0, 2.0, 3.0, 4.0], **QUIET)
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat_interleave(sizes)
    torch.testing.assert_close(layerwise.prior_precision_diag, expected)
    g_prior = lla.ExactLaplace(net, g_prior=True, prior_precision=0.7, n_samples=2, **QUIET)
    with pytest.raises(lla.NotFittedError, match="g_prior=True"):
        _ = g_prior.prior_precision_diag
    g_prior.fit((x, y))
    torch.testing.assert_close(g_prior.prior_precision_diag, 0.7 / g_prior.scale**2)
    # the g-prior's posterior precision is that of this prior in the weights' coordinates
    hessians = g_prior.likelihood.hessian(net(x).detach())
    jac = reference.jacobian(net, x)
    dense = reference.posterior_precision(jac, hessians, 0.7 / g_prior.scale**2)
    torch.testing.assert_close(g_prior.posterior_precision, dense)
    with pytest.raises(ValueError, match="Nyström basis"):
        _ = lla.NystromLaplace(net, rank=4, **QUIET).prior_precision_diag


@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_diagonal_output_is_the_covariances_diagonal(method):
    net, (x, y) = mlp(n_out=2), regression_data(12)
    la = (
        lla.ExactLaplace(net, "regression", **FIT)
        if method == "exact"
        else lla.SampledLaplace(net, "regression", solver=lla.Cholesky(), **FIT)
    ).fit((x, y))
    mean, var = la(x[:5], diagonal_output=True)
    full_mean, cov = la(x[:5])
    assert var.shape == (5, 2) and cov.shape == (5, 2, 2)
    torch.testing.assert_close(mean, full_mean, **CLOSE)
    torch.testing.assert_close(var, cov.diagonal(dim1=1, dim2=2), **CLOSE)
    classifier = lla.ExactLaplace(mlp(), **FIT).fit(classification_data(12))
    with pytest.raises(ValueError, match="applies to regression"):
        classifier(x, diagonal_output=True)


# ---------------------------------------------- validation grid search: objectives, the grid's edge
@pytest.mark.parametrize("name", ["exact", "sampled", "subnetwork", "nystrom"])
def test_joint_objective_at_a_vanishing_posterior_scores_the_map(name):
    (x, y), (val, val_y) = classification_data(40), classification_data(30, seed=5)
    la = METHODS[name](mlp()).fit((x, y))
    grid = torch.tensor([1.0, 1e12], dtype=torch.float64)
    with pytest.warns(UserWarning, match="grid"):
        chosen = la.select_prior_precision((val, val_y), grid, objective="joint", kappa=3)
    with torch.no_grad():
        logits = mlp()(val).double()[None].expand(64, -1, -1)
    deterministic = -lla.metrics.joint_log_likelihood(logits, val_y, 3, seed=3).mean()
    assert chosen["objective"] == "joint" and "nll" not in chosen
    torch.testing.assert_close(torch.tensor(chosen["scores"][1]), deterministic, rtol=1e-6, atol=0)
    assert chosen["scores"][0] != chosen["scores"][1]  # the posterior's spread changes the score


def test_an_interior_choice_does_not_warn_and_an_edge_choice_does(recwarn):
    (x, y), (val, val_y) = classification_data(40), classification_data(30, seed=5)
    la = METHODS["exact"](mlp()).fit((x, y))
    fine = torch.logspace(-3, 5, 17, dtype=torch.float64)
    scores = la.select_prior_precision((val, val_y), fine)["scores"]
    best = int(torch.tensor(scores).argmin())
    assert 0 < best < len(fine) - 1, "the fixture's optimum should lie inside the fine grid"
    recwarn.clear()
    around = fine[best - 1 : best + 2]
    chosen = la.select_prior_precision((val, val_y), around)
    assert not chosen["at_edge"] and not [w for w in recwarn if "grid" in str(w.message)]
    assert chosen["prior_precision"] == float(fine[best]) and chosen["nll"] == chosen["scores"]
    with pytest.warns(UserWarning, match="the largest value of the grid"):
        assert la.select_prior_precision((val, val_y), fine[: best - 1])["at_edge"]


@pytest.mark.parametrize("kind", ["exact", "sampled"])
def test_setting_prior_precision_refits_or_asks_for_a_fit(kind):
    net, (x, y) = mlp(n_out=2), regression_data(15)
    build = {
        "exact": lambda **kw: lla.ExactLaplace(net, "regression", **kw),
        "sampled": lambda **kw: lla.SampledLaplace(net, "regression", solver=lla.Cholesky(), **kw),
    }[kind]
    fit = {k: v for k, v in FIT.items() if k != "prior_precision"}
    la = build(prior_precision=2.0, **fit).fit((x, y))
    la.prior_precision = 2.0  # unchanged: the fit stays
    la(x)
    la.prior_precision = torch.tensor([0.4])
    assert la.prior_precision.tolist() == [0.4]
    expected = build(prior_precision=0.4, **fit).fit((x, y))
    if kind == "sampled":
        with pytest.raises(lla.NotFittedError, match=r"fitted at prior_precision=\[2.0\].*\.fit\("):
            la(x)
        la.fit((x, y))
    torch.testing.assert_close(la.sample(), expected.sample(), **CLOSE)
    with pytest.raises(ValueError, match="one value, one per parameter group"):
        la.prior_precision = [1.0, 2.0, 3.0]


@pytest.mark.parametrize("kind", ["exact", "sampled"])
def test_a_memory_budget_below_the_posteriors_needs_is_refused_before_any_solve(kind):
    net = mlp()
    x, y = classification_data(30)
    make = lla.ExactLaplace if kind == "exact" else lla.SampledLaplace
    fitted = make(net, n_samples=4, progress=False).fit((x, y))
    plan = fitted.memory_plan
    needed = sum(plan.needs.values())
    assert plan.hold_features and plan.budget_gib > needed + plan.features_gib
    with pytest.raises(MemoryError, match=f"at least {needed:.3g} GiB") as err:
        make(net, n_samples=4, memory_gib=needed / 2, progress=False).fit((x, y))
    suggested = float(str(err.value).split("memory_gib=")[1].split()[0])
    tight = make(net, n_samples=4, memory_gib=suggested, progress=False).fit((x, y))
    assert not tight.memory_plan.hold_features  # the rest of the budget is too small for Φ
    assert torch.allclose(tight.functional_variance(x), fitted.functional_variance(x), atol=1e-5)
    with pytest.raises(ValueError, match="memory_gib` must be a number > 0"):
        make(net, memory_gib=0)


def test_the_memory_plan_names_what_the_chosen_solver_holds(capsys):
    net = mlp()
    x, y = classification_data(30)
    kw = {"n_samples": 4, "progress": True}
    cg = lla.SampledLaplace(net, solver=lla.CG(preconditioner_rank=5), space="primal", **kw)
    cg.fit((x, y))
    d, itemsize = cg.n_params, next(net.parameters()).dtype.itemsize
    assert cg.memory_plan.needs["preconditioner sketch"] * 2**30 == 2 * 5 * d * itemsize
    assert cg.memory_plan.needs["samples and solver state"] * 2**30 == 6 * 4 * d * itemsize
    assert "memory plan:" in capsys.readouterr().err
    dense = lla.SampledLaplace(net, **kw).fit((x, y))  # auto: Cholesky
    assert dense.memory_plan.needs["dense primal matrix and its Cholesky factor"] * 2**30 == (
        2 * d * d * 8
    )
