"""A table of misuses: each must raise a library exception, or warn, naming the argument involved.

A case passes when its callable raises the expected exception from the library's own code (or a
library exception class) or issues the expected warning, and the message matches the case's
pattern. Raw torch errors (``RuntimeError`` itself, ``AttributeError``, ``KeyError``,
``IndexError``, ``AssertionError``) fail, wherever they come from.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

import linearised_laplace as lla
from linearised_laplace import metrics

PACKAGE = Path(lla.__file__).resolve().parent
RAW = (AttributeError, KeyError, IndexError, AssertionError)
F32 = torch.float32
N, D_IN, C = 30, 3, 3


def net(outputs: int = C, hidden: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, hidden), nn.Tanh(), nn.Linear(hidden, outputs)).float()


def inputs(n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=F32)


def labels(n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, C, (n,), generator=torch.Generator().manual_seed(seed))


def targets(n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=F32)


def sampled(**kwargs) -> lla.SampledLaplace:
    kwargs.setdefault("solver", lla.Cholesky())
    kwargs.setdefault("n_samples", 4)
    model = kwargs.pop("model", None)
    model = net() if model is None else model
    return lla.SampledLaplace(model, kwargs.pop("likelihood", "classification"), **kwargs)


def regression(**kwargs) -> lla.SampledLaplace:
    return sampled(model=net(1), likelihood="regression", **kwargs)


def fit_cls(data) -> Callable[[SimpleNamespace], object]:
    """A case that fits a fresh classification method on ``data``."""
    return lambda ctx: sampled().fit(data)


def fit_reg(data) -> Callable[[SimpleNamespace], object]:
    return lambda ctx: regression().fit(data)


class Stream(IterableDataset):
    def __iter__(self):
        yield from zip(inputs(), labels(), strict=True)


class Unlabelled(Dataset):
    """Hugging Face-style dict items whose targets are under "label", not "labels"."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"inputs": X[i], "label": Y[i]}


def flip_payload_byte(source: Path, target: Path) -> Path:
    """A copy of ``source`` with one byte of its last tensor's data flipped."""
    raw = bytearray(source.read_bytes())
    raw[-3] ^= 0xFF
    target.write_bytes(bytes(raw))
    return target


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[SimpleNamespace], object]  # the misuse, given the fitted objects
    match: str  # regex the message must contain: names the argument involved
    raises: type[BaseException] | None = None
    warns: type[Warning] | None = None


X, Y, YR = inputs(), labels(), targets()
NAN_X = X.clone().index_put_((torch.tensor([2]), torch.tensor([1])), torch.tensor(float("nan")))
NAN_YR = YR.clone().index_put_((torch.tensor([4]),), torch.tensor(float("nan")))
PROBS = torch.softmax(torch.randn(8, C, generator=torch.Generator().manual_seed(1)), -1)
Y8 = labels(8)
DS = TensorDataset(X, Y)

CASES = [
    # ------------------------------------------------------------------ constructors
    Case("likelihood-typo", lambda c: sampled(likelihood="classifcation"), "`likelihood`", ValueError),
    Case("sigma-noise-with-classification", lambda c: sampled(sigma_noise=0.5), "`sigma_noise`", ValueError),
    Case("sigma-noise-zero", lambda c: regression(sigma_noise=0.0), "`sigma_noise`", ValueError),
    Case("prior-precision-zero", lambda c: sampled(prior_precision=0.0), "`prior_precision`", ValueError),
    Case("prior-precision-negative", lambda c: sampled(prior_precision=-1.0), "`prior_precision`", ValueError),
    Case("prior-precision-nan", lambda c: sampled(prior_precision=float("nan")), "`prior_precision`", ValueError),
    Case("prior-precision-wrong-length", lambda c: sampled(prior_precision=[1.0, 2.0, 3.0]), "`prior_precision`", ValueError),
    Case("prior-precision-string", lambda c: sampled(prior_precision="big"), "`prior_precision`", TypeError),
    Case("n-samples-zero", lambda c: sampled(n_samples=0), "`n_samples`", ValueError),
    Case("n-samples-float", lambda c: sampled(n_samples=2.5), "`n_samples`", ValueError),
    Case("seed-none", lambda c: sampled(seed=None), "`seed`", TypeError),
    Case("seed-float", lambda c: sampled(seed=1.5), "`seed`", TypeError),
    Case("g-prior-probes-zero", lambda c: sampled(g_prior_probes=0), "`g_prior_probes`", ValueError),
    Case("model-not-a-module", lambda c: lla.SampledLaplace("net"), "`model`", TypeError),
    Case("parameters-bad-string", lambda c: sampled(parameters="last"), "`parameters`", ValueError),
    Case("parameters-bad-type", lambda c: sampled(parameters=5), "`parameters`", TypeError),
    Case("parameters-no-match", lambda c: sampled(parameters=["encoder.*"]), "`parameters`", ValueError),
    Case("parameters-index-out-of-range", lambda c: sampled(parameters=torch.tensor([0, 10**6])), "`parameters`", ValueError),
    Case("parameters-bool-mask", lambda c: sampled(parameters=torch.ones(38, dtype=torch.bool)), "`parameters`", TypeError),
    Case("tangent-batching-typo", lambda c: sampled(tangent_batching="fast"), "`tangent_batching`", ValueError),
    Case("solver-string", lambda c: sampled(solver="cg"), "`solver`", TypeError),
    Case("solver-class-not-instance", lambda c: sampled(solver=lla.CG), "`solver`", TypeError),
    Case("space-typo", lambda c: sampled(space="weights"), "`space`", ValueError),
    Case("space-dual-with-sgd", lambda c: sampled(space="dual", solver=lla.SGD()), "space=.dual.", ValueError),
    Case("space-primal-with-sdd", lambda c: sampled(space="primal", solver=lla.SDD()), "space='dual'", ValueError),
    Case("nystrom-layerwise-prior", lambda c: lla.NystromLaplace(net(), prior_precision=[1.0] * 4), "`prior_precision`", ValueError),
    Case("nystrom-rank-zero", lambda c: lla.NystromLaplace(net(), rank=0), "`rank`", ValueError),
    Case("nystrom-rank-above-points", lambda c: lla.NystromLaplace(net(), rank=50, n_points=2).fit((X, Y)), "`rank`", ValueError),
    Case("subnetwork-strategy-typo", lambda c: lla.SubnetworkLaplace(net(), subnetwork="swa"), "`subnetwork`", ValueError),
    Case("subnetwork-missing-size", lambda c: lla.SubnetworkLaplace(net(), subnetwork="swag"), "`n_params`", ValueError),
    Case("subnetwork-too-large", lambda c: lla.SubnetworkLaplace(net(), subnetwork="swag", n_params=10**6), "`n_params`", ValueError),
    # ------------------------------------------------------------------ solver settings
    Case("sgd-n-epochs-zero", lambda c: lla.SGD(n_epochs=0), "`n_epochs`", ValueError),
    Case("sgd-lr-zero", lambda c: lla.SGD(lr=0.0), "`lr`", ValueError),
    Case("sgd-lr-negative", lambda c: lla.SGD(lr=-0.1), "`lr`", ValueError),
    Case("sgd-retries-negative", lambda c: lla.SGD(retries=-1), "`retries`", ValueError),
    Case("sgd-polyak-above-one", lambda c: lla.SGD(polyak=5), "`polyak`", ValueError),
    Case("cg-preconditioner-typo", lambda c: lla.CG(preconditioner="KFAC"), "`preconditioner` must be one of", ValueError),
    Case("sgd-clip-zero", lambda c: lla.SGD(clip=0.0), "`clip`", ValueError),
    Case("sgd-clip-negative", lambda c: lla.SGD(clip=-1.0), "`clip`", ValueError),
    Case("sgd-decay-fraction-negative", lambda c: lla.SGD(decay_fraction=-1.0), "`decay_fraction`", ValueError),
    Case("sgd-momentum-one", lambda c: lla.SGD(momentum=1.0), "`momentum`", ValueError),
    Case("sgd-momentum-negative", lambda c: lla.SGD(momentum=-0.5), "`momentum`", ValueError),
    Case("sgd-objective-typo", lambda c: lla.SGD(objective="fast"), "`objective`", ValueError),
    Case("sgd-batch-size-string", lambda c: lla.SGD(batch_size="32"), "`batch_size`", ValueError),
    Case("cg-rtol-negative", lambda c: lla.CG(rtol=-1.0), "`rtol`", ValueError),
    Case("cg-max-iter-zero", lambda c: lla.CG(max_iter=0), "`max_iter`", ValueError),
    Case("sdd-averaging-zero", lambda c: lla.SDD(averaging=0.0), "`averaging`", ValueError),
    Case("sdd-momentum-one", lambda c: lla.SDD(momentum=1.0), "`momentum`", ValueError),
    # ------------------------------------------------------------------ training data
    Case("data-tuple-lengths-differ", fit_cls((X, Y[:-1])), "X and Y", ValueError),
    Case("data-tuple-of-arrays", fit_cls((X.numpy(), Y.numpy())), "two tensors", TypeError),
    Case("data-list-not-tuple", fit_cls([X, Y]), "Training data", TypeError),
    Case("data-empty", fit_cls((X[:0], Y[:0])), "empty", ValueError),
    Case("data-nan-inputs", fit_cls((NAN_X, Y)), "training inputs", ValueError),
    Case("data-nan-targets", fit_reg((X, NAN_YR)), "training targets", ValueError),
    Case("labels-out-of-range", fit_cls((X, Y + 1)), "labels", ValueError),
    Case("labels-negative", fit_cls((X, Y - 1)), "labels", ValueError),
    Case("labels-one-hot", fit_cls((X, nn.functional.one_hot(Y, C))), r"targets.*shape \[N\]", ValueError),
    Case("labels-float", fit_cls((X, Y.float())), "integer class labels", TypeError),
    Case("regression-integer-targets", fit_reg((X, Y[:, None])), "floating point", TypeError),
    Case("regression-targets-wrong-shape", fit_reg((X, YR.expand(-1, 2))), r"targets must have shape", ValueError),
    Case("loader-sampler-with-replacement", fit_cls(DataLoader(DS, sampler=RandomSampler(DS, replacement=True))), "sampler", ValueError),
    Case("loader-distributed-sampler", fit_cls(DataLoader(DS, sampler=DistributedSampler(DS, num_replicas=1, rank=0))), "DistributedSampler", ValueError),
    Case("loader-iterable-dataset", fit_cls(DataLoader(Stream(), batch_size=8)), "Iterable", TypeError),
    Case("data-float64-inputs", fit_cls((X.double(), Y)), "float64", TypeError),
    Case("data-dict-items-without-labels", fit_cls(DataLoader(Unlabelled(), batch_size=8)), "'labels'", TypeError),
    # ------------------------------------------------------------------ predictions
    Case("predict-before-fit", lambda c: sampled()(X), r"fit\(", lla.NotFittedError),
    Case("samples-before-fit", lambda c: sampled().posterior_samples, r"fit\(", lla.NotFittedError),
    Case("exact-covariance-before-fit", lambda c: lla.ExactLaplace(net()).posterior_covariance, r"fit\(", lla.NotFittedError),
    Case("predict-wrong-width", lambda c: c.sampled(torch.randn(4, 7, dtype=F32)), "`x`", ValueError),
    Case("predict-unbatched", lambda c: c.sampled(X[0]), r"`x`.*x\[None\]", ValueError),
    Case("predict-0d", lambda c: c.sampled(torch.tensor(1.0, dtype=F32)), "`x`", ValueError),
    Case("predict-nan", lambda c: c.sampled(NAN_X), "`x`", ValueError),
    Case("predict-float64", lambda c: c.sampled(X.double()), "`x`", TypeError),
    Case("predict-list", lambda c: c.sampled(X.tolist()), "`x`", TypeError),
    Case("predict-dict-for-tensor-model", lambda c: c.sampled({"inputs": X}), "cannot take `x`.*'inputs'", TypeError),
    Case("predict-tuple-rows-differ", lambda c: c.sampled((X, X[:3])), "same N rows", ValueError),
    Case("predict-dict-of-text", lambda c: c.sampled({"text": ["a", "b"]}), "`x`.*not tensors", TypeError),
    Case("predict-link-approx-typo", lambda c: c.sampled(X, link_approx="laplace"), "`link_approx`", ValueError),
    Case("predict-more-samples-than-drawn", lambda c: c.sampled.predictive_samples(X, n_samples=99), "n_samples", ValueError),
    Case("predict-n-samples-zero", lambda c: c.sampled.predictive_samples(X, n_samples=0), "`n_samples`", ValueError),
    Case("exact-variance-nan", lambda c: c.exact.functional_variance(NAN_X), "`x`", ValueError),
    # ------------------------------------------------------------------ EM
    Case("em-max-iter-zero", lambda c: c.exact.optimize_prior_precision((X, Y), max_iter=0), "`max_iter`", ValueError),
    Case("em-tol-zero", lambda c: c.exact.optimize_prior_precision((X, Y), tol=0), "`tol`", ValueError),
    Case("em-gamma-typo", lambda c: c.sampled.optimize_prior_precision((X, Y), gamma="weights"), "`gamma`", ValueError),
    Case("em-mean-typo", lambda c: c.exact.optimize_prior_precision((X, Y), mean="mode"), "`mean`", ValueError),
    Case("em-exact-n-em-samples", lambda c: c.exact.optimize_prior_precision((X, Y), n_em_samples=8), "n_em_samples.*ExactLaplace's EM does not use", TypeError),
    Case("em-exact-gamma", lambda c: c.exact.optimize_prior_precision((X, Y), gamma="weight"), "gamma.*takes none", TypeError),
    Case("em-subnetwork-n-em-samples", lambda c: lla.SubnetworkLaplace(net(), subnetwork="magnitude", n_params=5).optimize_prior_precision((X, Y), n_em_samples=4), "SubnetworkLaplace's EM", TypeError),
    Case("em-nystrom-gamma", lambda c: lla.NystromLaplace(net(), n_points=10, rank=3).optimize_prior_precision((X, Y), gamma="weight"), "NystromLaplace's EM", TypeError),
    Case("em-sampled-unknown-option", lambda c: c.sampled.optimize_prior_precision((X, Y), n_samples_em=4), r"\['n_samples_em'\].*takes only \['gamma', 'n_em_samples', 'em_rtol'\]", TypeError),
    Case("select-objective-typo", lambda c: c.exact.select_prior_precision((X, Y), objective="joint-ll"), "`objective`", ValueError),
    Case("select-joint-regression", lambda c: regression().fit((X, YR)).select_prior_precision((X, YR), objective="joint"), "regression use objective='nll'", ValueError),
    Case("select-kappa-above-points", lambda c: c.exact.select_prior_precision((X[:4], Y[:4]), objective="joint", kappa=5), "`kappa`", ValueError),
    Case("select-kappa-zero", lambda c: c.exact.select_prior_precision((X, Y), objective="joint", kappa=0), "`kappa`", ValueError),
    Case("em-n-em-samples-zero", lambda c: c.sampled.optimize_prior_precision((X, Y), n_em_samples=0), "`n_em_samples`", ValueError),
    Case("em-rtol-one", lambda c: c.sampled.optimize_prior_precision((X, Y), em_rtol=1.0), r"`em_rtol` must lie in \(0, 1\)", ValueError),
    Case("em-update-sigma-classification", lambda c: c.exact.optimize_prior_precision((X, Y), update_sigma=True), "`update_sigma", ValueError),
    Case("em-checkpoint-missing-folder", lambda c: c.exact.optimize_prior_precision((X, Y), checkpoint=c.tmp / "no" / "em.st"), "`checkpoint`", FileNotFoundError),
    Case("em-checkpoint-is-a-folder", lambda c: c.exact.optimize_prior_precision((X, Y), checkpoint=c.tmp), "`checkpoint`", IsADirectoryError),
    Case("em-checkpoint-of-another-run", lambda c: lla.ExactLaplace(net(), seed=1).optimize_prior_precision((X, Y), max_iter=1, checkpoint=c.em_file), "another EM run.*seed", ValueError),
    Case("em-checkpoint-is-a-posterior", lambda c: lla.ExactLaplace(net()).optimize_prior_precision((X, Y), max_iter=1, checkpoint=c.exact_file), "not an EM checkpoint", ValueError),
    # ------------------------------------------------------------------ select_prior_precision
    Case("select-nan-inputs", lambda c: c.exact.select_prior_precision((NAN_X, Y)), "val_loader", ValueError),
    Case("select-labels-out-of-range", lambda c: c.exact.select_prior_precision((X, Y + 1)), "val_loader", ValueError),
    Case("select-float-labels", lambda c: c.exact.select_prior_precision((X, Y.float())), "val_loader", TypeError),
    Case("select-grid-zero", lambda c: c.exact.select_prior_precision((X, Y), grid=[0.0, 1.0]), "`grid`", ValueError),
    Case("select-before-fit", lambda c: lla.ExactLaplace(net()).select_prior_precision((X, Y)), r"fit\(", lla.NotFittedError),
    Case("evidence-prior-precision-negative", lambda c: c.exact.log_marginal_likelihood(prior_precision=-1.0), "`prior_precision`", ValueError),
    # ------------------------------------------------------------------ metrics
    Case("metric-labels-out-of-range", lambda c: metrics.accuracy(PROBS, Y8 + 1), "`y`", ValueError),
    Case("metric-labels-one-hot", lambda c: metrics.brier_score(PROBS, nn.functional.one_hot(Y8, C)), "`y`", ValueError),
    Case("metric-labels-wrong-length", lambda c: metrics.accuracy(PROBS, Y8[:5]), "`y`", ValueError),
    Case("metric-nan-probs", lambda c: metrics.brier_score(PROBS.clone().fill_(float("nan")), Y8), "`probs`", ValueError),
    Case("metric-logits-as-probs", lambda c: metrics.accuracy(PROBS.log(), Y8), "`probs`", ValueError),
    Case("metric-probs-1d", lambda c: metrics.predictive_entropy(PROBS[0]), "`probs`", ValueError),
    Case("metric-ece-bins-zero", lambda c: metrics.expected_calibration_error(PROBS, Y8, n_bins=0), "`n_bins`", ValueError),
    Case("metric-samples-2d", lambda c: metrics.marginal_log_likelihood(PROBS, Y8), "`samples`", ValueError),
    Case("metric-kappa-zero", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=0), "`kappa`", ValueError),
    Case("metric-kappa-above-n", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=9), r"`kappa` must be an integer in \[1, 8\]", ValueError),
    Case("metric-tau-below-kappa", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=3, tau=2), r"`tau` must be an integer >= 3.*tau=kappa", ValueError),
    Case("metric-tau-fractional", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=2, tau=2.5), r"`tau` must be an integer >= 2.*got 2\.5", ValueError),
    Case("metric-tau-zero-multinomial", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=2, tau=0, counts="multinomial"), r"`tau` must be an integer >= 1", ValueError),
    Case("metric-n-shuffles-zero", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=2, n_shuffles=0), "`n_shuffles` must be an integer >= 1", ValueError),
    Case("metric-unknown-counts", lambda c: metrics.joint_log_likelihood(PROBS[None], Y8, kappa=2, counts="dirichlet"), r"`counts` must be one of .*'dirichlet'", ValueError),
    Case("metric-dyadic-kappa-one", lambda c: metrics.dyadic_joint_log_likelihood(PROBS[None], Y8, kappa=1), "kappa", ValueError),
    Case("metric-ood-probs-out-nan", lambda c: metrics.ood_auroc(PROBS, PROBS * float("nan")), "`probs_out`", ValueError),
    Case("metric-gaussian-mean-1d", lambda c: metrics.gaussian_log_likelihood(YR[:, 0], YR, YR), "mean", ValueError),
    Case("metric-gaussian-nan-covariance", lambda c: metrics.gaussian_log_likelihood(YR, YR * float("nan"), YR), "`covariance`", ValueError),
    # ------------------------------------------------------------------ files
    Case("load-missing-file", lambda c: lla.SampledLaplace.load(c.tmp / "missing.st", net()), "missing.st", FileNotFoundError),
    Case("load-truncated-file", lambda c: lla.SampledLaplace.load(c.truncated, net()), "truncated", ValueError),
    Case("load-flipped-byte", lambda c: lla.SampledLaplace.load(c.flipped, net()), "damaged: the tensor", ValueError),
    Case("load-em-checkpoint", lambda c: lla.ExactLaplace.load(c.em_file, net()), "EM checkpoint", ValueError),
    Case("load-with-other-class", lambda c: lla.SampledLaplace.load(c.exact_file, net()), r"lla\.ExactLaplace\.load", ValueError),
    Case("load-other-architecture", lambda c: lla.SampledLaplace.load(c.sampled_file, net(hidden=7)), r"different model.*0\.weight", ValueError),
    Case("load-other-weights-strict", lambda c: lla.SampledLaplace.load(c.sampled_file, net(seed=1), strict=True), r"in '\d\.(weight|bias)'", ValueError),
    Case("load-other-weights", lambda c: lla.SampledLaplace.load(c.sampled_file, net(seed=1)), r"in '\d\.(weight|bias)'", warns=UserWarning),
    Case("save-before-fit", lambda c: sampled().save(c.tmp / "unfitted.st"), r"fit\(", lla.NotFittedError),
    Case("save-into-missing-folder", lambda c: c.sampled.save(c.tmp / "no" / "la.st"), "does not exist", FileNotFoundError),
]  # fmt: skip


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> SimpleNamespace:
    """Fitted methods and the files the file cases read, built once."""
    tmp = tmp_path_factory.mktemp("misuse")
    exact = lla.ExactLaplace(net(), n_samples=4).fit((X, Y))
    fitted = sampled().fit((X, Y))
    exact_file, sampled_file, em_file = tmp / "exact.st", tmp / "sampled.st", tmp / "em.st"
    exact.save(exact_file)
    fitted.save(sampled_file)
    with warnings.catch_warnings():  # one EM step does not converge, by design
        warnings.simplefilter("ignore", lla.ConvergenceWarning)
        lla.ExactLaplace(net(), n_samples=4).optimize_prior_precision(
            (X, Y), max_iter=1, checkpoint=em_file
        )
    truncated = tmp / "truncated.st"
    truncated.write_bytes(sampled_file.read_bytes()[:-40])
    flipped = flip_payload_byte(sampled_file, tmp / "flipped.st")
    return SimpleNamespace(
        tmp=tmp,
        exact=exact,
        sampled=fitted,
        exact_file=exact_file,
        sampled_file=sampled_file,
        em_file=em_file,
        truncated=truncated,
        flipped=flipped,
    )


def raised_in_library(err: BaseException) -> bool:
    """Whether ``err`` was raised by library code, or is a class the library defines."""
    if type(err).__module__.startswith("linearised_laplace"):
        return True
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return PACKAGE in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def test_table_is_large_and_ids_unique():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_misuse(case: Case, ctx: SimpleNamespace):
    if case.warns is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.call(ctx)
        hits = [w for w in caught if issubclass(w.category, case.warns)]
        assert hits, f"no {case.warns.__name__}; got {[str(w.message) for w in caught]}"
        assert any(re.search(case.match, str(w.message)) for w in hits), [
            str(w.message) for w in hits
        ]
        return
    with pytest.raises(Exception) as info:  # noqa: PT011 (checked below)
        case.call(ctx)
    err, message = info.value, str(info.value)
    assert not isinstance(err, RAW), f"raw {type(err).__name__}: {message}"
    assert type(err) is not RuntimeError, f"raw RuntimeError: {message}"
    assert isinstance(err, case.raises), f"{type(err).__name__} instead of {case.raises}: {message}"
    assert raised_in_library(err), f"{type(err).__name__} raised outside the library: {message}"
    assert re.search(case.match, message), f"{case.match!r} not in: {message}"


# ---------------------------------------------------------------------- what must keep working
def test_numpy_integer_n_samples_and_seed_are_accepted():
    la = sampled(n_samples=np.int64(3), seed=np.int64(2))
    assert (la.n_samples, la.seed) == (3, 2)
    assert type(la.n_samples) is int


def test_numpy_inputs_are_accepted(ctx: SimpleNamespace):
    probs = ctx.sampled(X.numpy())
    torch.testing.assert_close(probs, ctx.sampled(X))


EM_METHODS = {
    "ExactLaplace": lambda: lla.ExactLaplace(net(), progress=False),
    "SubnetworkLaplace": lambda: lla.SubnetworkLaplace(
        net(), subnetwork="magnitude", n_params=5, progress=False
    ),
    "NystromLaplace": lambda: lla.NystromLaplace(net(), n_points=10, rank=3, progress=False),
    "SampledLaplace": lambda: sampled(),
}
EM_OPTIONS = {"gamma": "weight", "n_em_samples": 4, "n_samples_em": 4, "lr": 0.1}


REFUSED = [
    (method, option)
    for method in EM_METHODS
    for option in EM_OPTIONS
    if not (method == "SampledLaplace" and option in ("gamma", "n_em_samples"))
]


@pytest.mark.parametrize(("method", "option"), REFUSED)
def test_an_em_keyword_a_method_does_not_take_raises_before_any_work(method, option, monkeypatch):
    la = EM_METHODS[method]()

    def no_work(*args, **kwargs):
        raise AssertionError("the linear model was built before the keyword was refused")

    monkeypatch.setattr(type(la), "linear_model", no_work)
    with pytest.raises(TypeError, match=rf"\['{option}'\].*{method}'s EM does not use"):
        la.optimize_prior_precision((X, Y), **{option: EM_OPTIONS[option]})
