r"""Image classification as in Antorán et al. (2023): Table 1, Figure 5 (shift) and Figure 6 (EM).

One network is trained to its MAP estimate; every method then produces function samples
``[S, N, C]`` on the clean test set, on rotated copies (0°–180°) and on out-of-distribution inputs,
and all are scored by the same metrics (:mod:`linearised_laplace.metrics`). Each method runs in its
own process (fit time and peak memory are its own), and its result is cached under ``out/methods/``
so that an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import metrics
from ..core.progress import progress_bar
from ..methods.exact import ExactLaplace
from ..methods.nystrom import NystromLaplace
from ..methods.sampled import SampledLaplace
from ..methods.subnetwork import SubnetworkLaplace
from ..solvers import SGD
from ..solvers.mean import mean_mode
from . import peers
from .baselines import ensemble_samples, mc_dropout_samples
from .catalogue import ALL_METHODS, EM_OPTIONS, OUR_METHODS, VARIANTS
from .datasets import ImageData, digits, fashion_mnist, out_of_distribution, rotate
from .models import ARCHITECTURES, build
from .provenance import provenance
from .report import seed_reports, write_report, write_seed_report
from .timing import stopwatch
from .training import TrainConfig, train_map
from .workers import run_worker, use_idle_cores

WEIGHT_DECAY = 1e-4
DATASETS = ("digits", "fashion-mnist")
ANGLES = (0, 15, 30, 45, 60, 75, 90, 120, 150, 180)
KAPPAS = (1, 2, 3, 4, 5)
# Recorded with every result: cached results scored otherwise are rerun.
DEFAULT_MEMORY_GIB = 9.5  # below the default budget on an idle 24 GiB machine (11.3), as if idle
SCORING = "κ-adic joint LL, τ = 10(κ − 1), 10 shuffles; mean confidence"
Predictor = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Settings:
    """What a classification benchmark runs (every field is recorded with the results).

    Attributes:
        dataset: ``"digits"`` or ``"fashion-mnist"``.
        model: ``"mlp"``, ``"cnn"`` or ``"resnet"``.
        methods: Methods to compare (ours and, when installed, laplace-torch's ``lt-*``).
        out: Output folder.
        n_train: Training points kept (``None``: all).
        width: Channels of the CNN's first layer / the ResNet's first stage.
        n_samples: Posterior samples (and dropout masks) per predictive.
        epochs: MAP training epochs (default: 100 for digits, 20 for Fashion-MNIST).
        weight_decay: The MAP's L2 penalty; ``0`` with many epochs trains an overconfident MAP.
        ensemble: Deep-ensemble size.
        em_steps: EM steps for the prior precision.
        em_samples: Posterior samples per sample-based E-step.
        sampler_epochs: SGD epochs per sample-then-optimise solve.
        mean_epochs: SGD epochs for the linear model's mean in sampled EM (``None``: Newton-CG,
            precise but one data pass per CG iteration).
        subnetwork_size: Weights in the subnetwork.
        nystrom_points: ``M`` of the Nyström basis; its rank is 20.
        angles: Rotations of the test set (Figure 5).
        seed: Seeds training, data splits and samples.
        device: ``"cpu"``, ``"cuda"``, or ``None`` for the GPU where there is one.
    """

    dataset: str = "digits"
    model: str = "cnn"
    methods: tuple[str, ...] = OUR_METHODS
    out: str = "lla-output"
    n_train: int | None = None
    width: int = 16
    n_samples: int = 64
    epochs: int | None = None
    weight_decay: float = WEIGHT_DECAY
    ensemble: int = 5
    em_steps: int = 10
    em_samples: int = 8
    sampler_epochs: int = 50
    mean_epochs: int | None = None
    subnetwork_size: int = 1000
    nystrom_points: int = 1000
    angles: tuple[int, ...] = ANGLES
    seed: int = 0
    smoke: bool = field(default=False)
    device: str | None = None

    def __post_init__(self):
        if self.device is None:
            object.__setattr__(self, "device", "cuda" if torch.cuda.is_available() else "cpu")
        if self.epochs is None:
            object.__setattr__(self, "epochs", 100 if self.dataset == "digits" else 20)
        if self.dataset not in DATASETS:
            raise ValueError(
                f"Unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}."
            )
        if self.model not in ARCHITECTURES:
            raise ValueError(
                f"Unknown model {self.model!r}; choose one of {', '.join(ARCHITECTURES)}."
            )
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(
                f"Unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}."
            )

    @staticmethod
    def smoke_test(out: str, dataset: str = "digits", model: str = "cnn") -> Settings:
        """Tiny sizes that exercise every method in seconds."""
        return Settings(
            dataset=dataset,
            model=model,
            out=out,
            n_train=150,
            width=4,
            n_samples=4,
            epochs=2,
            ensemble=2,
            em_steps=2,
            sampler_epochs=2,
            subnetwork_size=50,
            nystrom_points=50,
            angles=(0, 90),
            smoke=True,
        )


def load_data(settings: Settings) -> ImageData:
    """The data set of ``settings`` (shrunk for smoke tests), on the CPU."""
    data = (
        digits()
        if settings.dataset == "digits"
        else fashion_mnist(n_train=settings.n_train, seed=settings.seed)
    )
    if settings.dataset == "digits" and settings.n_train is not None:
        data = replace(data, train=tuple(t[: settings.n_train] for t in data.train))
    if settings.smoke:
        data = replace(
            data, val=tuple(t[:100] for t in data.val), test=tuple(t[:200] for t in data.test)
        )
    return data


def network_tag(settings: Settings, seed: int, dropout: float = 0.0) -> str:
    """The name of a trained network's files in ``out/checkpoints``."""
    return (
        f"{settings.dataset}-{settings.model}{settings.width}-n{settings.n_train}-e{settings.epochs}"
        f"-d{dropout}-s{seed}"
    ) + (f"-wd{settings.weight_decay:g}" if settings.weight_decay != WEIGHT_DECAY else "")


def trained_model(
    settings: Settings, data: ImageData, seed: int, dropout: float = 0.0, cache: bool = True
) -> nn.Module:
    """A MAP network on the data's device, trained once and cached in ``out/checkpoints``.

    ``cache=False`` trains afresh and keeps nothing (the MAP row times its training so).
    """
    folder = Path(settings.out) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    tag = network_tag(settings, seed, dropout)
    final = folder / f"{tag}.safetensors"
    torch.manual_seed(seed)
    size = {"hidden": 16 * settings.width} if settings.model == "mlp" else {"width": settings.width}
    net = build(settings.model, data.image_shape, data.classes, dropout=dropout, **size)
    device = data.train[0].device
    net = net.to(dtype=data.train[0].dtype, device=device)
    if cache and final.exists():
        net.load_state_dict(load_file(str(final), device=str(device)))
        return net.eval()
    config = TrainConfig(epochs=settings.epochs, weight_decay=settings.weight_decay, seed=seed)
    if not cache:
        train_map(net, data.train, config, progress=None)
        return net.eval()
    train_map(
        net, data.train, config, checkpoint=folder / f"{tag}.partial.safetensors", progress=None
    )
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(final))
    (folder / f"{tag}.partial.safetensors").unlink(missing_ok=True)
    return net.eval()


def build_predictor(
    method: str, settings: Settings, data: ImageData, net: nn.Module
) -> tuple[Predictor, dict]:
    """Fit ``method`` and return ``x ↦`` logit samples ``[S, N, C]`` and extra information."""
    s = settings
    kw = {"n_samples": s.n_samples, "progress": False, "exclude_norm": True}
    if method == "map":  # its fit is a fresh training run, to compare the others' fit with
        fresh = trained_model(s, data, s.seed, cache=False)
        return (lambda x: fresh(x).detach()[None]), {}
    if method == "ensemble":
        members = [net] + [trained_model(s, data, s.seed + k) for k in range(1, s.ensemble)]
        return (lambda x: ensemble_samples(members, x)), {}
    if method == "mc-dropout":
        dropout_net = trained_model(s, data, s.seed, dropout=0.1)
        return (lambda x: mc_dropout_samples(dropout_net, x, s.n_samples, seed=s.seed)), {}
    if method.startswith("lt-"):
        return peers.laplace_torch_predictor(
            method, net, data.train, data.val, s.n_samples, s.subnetwork_size
        )
    tag = Path(s.out) / "checkpoints" / network_tag(s, s.seed)
    name, (method, variant) = method, split_variant(method)
    em = {k: variant.pop(k) for k in EM_OPTIONS if k in variant}
    checkpoint = str(em_checkpoint(s, name))
    if variant.pop("defaults", False):  # the library's solvers and EM, Φ held as on an idle machine
        la = (SampledLaplace if method == "sampled" else ExactLaplace)(
            net, memory_gib=DEFAULT_MEMORY_GIB, **kw, **variant
        )
        return fit_by_em(la, data.train, checkpoint=checkpoint, **em)
    own = {**kw, "g_prior": True, **variant}  # sampled and exact: Antorán et al.'s (2023) g-prior
    # sampled and exact share the mean's solver, so that they differ only in γ and the samples
    mean_solver = None if s.mean_epochs is None else SGD(n_epochs=s.mean_epochs)
    if method == "sampled":
        solver = SGD(n_epochs=s.sampler_epochs)
        la = SampledLaplace(net, solver=solver, mean_solver=mean_solver, **own)
    elif method == "exact":  # its GGN (most of its cost) is kept for a rerun on the same network
        ggn_cache = f"{tag}-{name.removesuffix('-mapmean')}-ggn.safetensors"  # EM's mean: same GGN
        la = ExactLaplace(net, mean_solver=mean_solver, ggn_cache=ggn_cache, **own)
    elif method == "subnetwork":
        la = SubnetworkLaplace(net, subnetwork="swag", n_params=s.subnetwork_size, **kw)
    else:  # nystrom, tuned on validation data as in the ELLA paper
        la = NystromLaplace(net, n_points=min(s.nystrom_points, len(data.train[0])), **kw)
        la.fit(data.train).select_prior_precision(data.val)
        return la.predictive_samples, {"prior_precision": la.prior_precision.tolist()}
    return fit_by_em(la, data.train, s.em_steps, s.em_samples, checkpoint, **em)


def em_checkpoint(s: Settings, method: str) -> Path:
    """Where ``method``'s EM keeps its state until its result is written (then it is removed)."""
    return Path(s.out) / "checkpoints" / f"{network_tag(s, s.seed)}-{method}-em.safetensors"


def split_variant(method: str) -> tuple[str, dict]:
    """A method and its variant's options.

    ``"sampled-isotropic-mapmean"`` → ``("sampled", {"g_prior": False, "mean": "network"})``.
    """
    options = {}
    while suffix := next((v for v in VARIANTS if method.endswith(v)), None):
        method, options = method.removesuffix(suffix), {**VARIANTS[suffix], **options}
    return method, options


def fit_by_em(
    la,
    train,
    em_steps: int | None = None,
    em_samples: int | None = None,
    checkpoint: str | None = None,
    mean: str = "tangent",
) -> tuple[Predictor, dict]:
    """Learn ``la``'s prior precision by EM on ``train``; its predictive samples and EM's record.

    ``la``: a Laplace method; ``em_steps``: EM's ``max_iter``; ``em_samples``: samples per E-step
    of a sampled one (``None``: the library's defaults); ``checkpoint``: EM's state after each
    step, resumed from by a rerun with the same settings; ``mean``: EM's mean (see
    :meth:`~linearised_laplace.methods.base.Laplace.optimize_prior_precision`).
    """
    em = {"max_iter": em_steps} if em_steps is not None else {}
    if isinstance(la, SampledLaplace) and em_samples is not None:
        em["n_em_samples"] = em_samples
    history = la.optimize_prior_precision(train, checkpoint=checkpoint, mean=mean, **em)
    mode = mean_mode(mean, la.likelihood, la.g_prior).value
    info = {"em_history": history, "prior_precision": la.prior_precision.tolist(), "mean": mode}
    info["em costs"] = la.em_costs  # CPU and wall seconds of set-up, EM and the final samples
    info["linearised weights"] = la.coordinates.dim
    info["prior"] = "g-prior" if la.g_prior else "isotropic"
    if isinstance(la, SampledLaplace):
        info["solve"] = la.solve_info.summary()  # the final draw: worst residual against its tol
    return la.predictive_samples, info


def score(samples: Tensor, y: Tensor) -> dict:
    """Metrics of logit samples ``[S, N, C]`` against labels."""
    log_probs = torch.log_softmax(samples.double(), -1)
    probs = log_probs.exp().mean(0)
    row = {
        "accuracy": metrics.accuracy(probs, y),
        "confidence": float(probs.max(-1).values.mean()),
        "logit variance": float(samples.double().var(0, correction=0).mean()),  # over samples
        "NLL": -float(metrics.marginal_log_likelihood(log_probs, y).mean()),
        "ECE": metrics.expected_calibration_error(probs, y),
        "Brier": metrics.brier_score(probs, y),
    }
    for kappa in KAPPAS:
        row[f"joint LL κ={kappa}"] = float(metrics.joint_log_likelihood(log_probs, y, kappa).mean())
    row["dyadic LL κ=10"] = float(metrics.dyadic_joint_log_likelihood(log_probs, y, 10).mean())
    return row


def evaluate(method: str, settings: Settings) -> dict:
    """Fit and score one method (run in its own process by :func:`run`)."""
    threads = use_idle_cores()
    data = load_data(settings)
    on_device = data.to(settings.device)
    net = trained_model(settings, on_device, settings.seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sync = torch.cuda.synchronize if settings.device == "cuda" else None
    with stopwatch(sync) as clock:  # a fit is timed once; CPU time is what load cannot inflate
        fitted, info = build_predictor(method, settings, on_device, net)
    fit_seconds, fit_cpu = clock.timing.wall_median, clock.timing.cpu_median

    def predictor(inputs: Tensor) -> Tensor:
        return fitted(inputs.to(settings.device)).cpu()

    x, y = data.test
    with torch.no_grad():
        test_samples = predictor(x)
        ood_samples = predictor(out_of_distribution(data))
        shifted = {
            angle: score(test_samples if angle == 0 else predictor(rotate(x, angle)), y)
            for angle in settings.angles
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    probs_in = torch.softmax(test_samples.double(), -1).mean(0)
    probs_out = torch.softmax(ood_samples.double(), -1).mean(0)
    confidence, accuracy, counts = metrics.calibration_bins(probs_in, y, 15)
    return {
        "method": method,
        "device": settings.device,
        "threads": threads,
        "fit [s]": fit_seconds,
        "fit CPU [s]": fit_cpu,
        "peak memory [MB]": max(peak - before, 0) / 1024,
        **score(test_samples, y),
        "OOD AUROC": metrics.ood_auroc(probs_in, probs_out),
        "rotated": {
            str(a): {k: v for k, v in r.items() if k in ("NLL", "joint LL κ=5", "accuracy")}
            for a, r in shifted.items()
        },
        "reliability": {
            "confidence": confidence.nan_to_num(-1).tolist(),
            "accuracy": accuracy.nan_to_num(-1).tolist(),
            "count": counts.tolist(),
        },
        **info,
    }


# Settings that only some methods read: a cached result stands while the others agree.
METHOD_SETTINGS = {
    "ensemble": ("ensemble",),
    "sampled": ("em_steps", "em_samples", "sampler_epochs", "mean_epochs"),
    "exact": ("em_steps",),
    "subnetwork": ("em_steps", "subnetwork_size"),
    "nystrom": ("nystrom_points",),
}
_METHOD_SPECIFIC = {key for keys in METHOD_SETTINGS.values() for key in keys}


def _relevant(settings: dict, method: str) -> dict:
    """The recorded settings that decide ``method``'s result."""
    own = set(METHOD_SETTINGS.get(split_variant(method)[0], ()))
    if method.startswith("lt-subnet"):
        own.add("subnetwork_size")
    return {k: v for k, v in settings.items() if k not in _METHOD_SPECIFIC or k in own}


def _cached(path: Path, settings: Settings, method: str) -> dict | None:
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    current = _settings_json(settings)
    defaults = {f.name: f.default for f in fields(Settings)}
    stored = {k: defaults[k] for k in current if k in defaults} | result.get("settings", {})
    return result if _relevant(stored, method) == _relevant(current, method) else None


def _settings_json(settings: Settings) -> dict:
    kept = {k: v for k, v in asdict(settings).items() if k not in ("methods", "out", "device")}
    return json.loads(json.dumps({**kept, "scoring": SCORING}))


def run(settings: Settings, progress: bool | None = None) -> dict:
    """Train, fit every method in its own process, and write the report (JSON, markdown, PNGs).

    Methods whose result is cached for the same settings (those the method reads) are not rerun;
    a method that fails is reported with its error instead of stopping the benchmark. The report
    also holds every other method cached in ``out`` under the same settings, so a run of a few
    methods adds them to the folder's report rather than replacing it; rows in
    :data:`ALL_METHODS` order.
    """
    out = Path(settings.out)
    (out / "methods").mkdir(parents=True, exist_ok=True)
    data = load_data(settings).to(settings.device)
    trained_model(settings, data, settings.seed)  # train once, before the workers
    methods = [m for m in settings.methods if not m.startswith("lt-") or peers.available()]
    skipped = [m for m in settings.methods if m not in methods]
    results = []
    for method in progress_bar(methods, enabled=progress, desc="methods"):
        path = out / "methods" / f"{method}.json"
        result = _cached(path, settings, method)
        if result is None:
            result = _run_worker(method, settings)
            result["settings"] = _settings_json(settings)
            result["provenance"] = provenance()
            path.write_text(json.dumps(result, indent=1))
            # EM's state is for resuming this run; a rerun (its result deleted) starts afresh
            em_checkpoint(settings, method).unlink(missing_ok=True)
        results.append(result)
    for method in ALL_METHODS:
        path = out / "methods" / f"{method}.json"
        if method not in methods and (result := _cached(path, settings, method)) is not None:
            results.append(result)
    results.sort(key=lambda r: ALL_METHODS.index(r["method"]))
    skipped = [m for m in skipped if m not in {r["method"] for r in results}]  # cached rows stay
    report = {
        "settings": _settings_json(settings),
        "skipped": skipped,
        "results": results,
        "provenance": provenance(),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    write_report(report, out)
    return report


def run_seeds(settings: Settings, seeds: list[int], progress: bool | None = None) -> list[dict]:
    """:func:`run` once per MAP seed, in ``out/seed-<seed>``.

    ``out/results.md`` then holds the mean ± standard error over every ``seed-*`` folder in ``out``,
    those of earlier runs too (their settings must match, bar the seed, methods and angles).
    """
    reports = [
        run(replace(settings, seed=seed, out=str(Path(settings.out) / f"seed-{seed}")), progress)
        for seed in seeds
    ]
    write_seed_report(seed_reports(Path(settings.out)), Path(settings.out))
    return reports


def render(out: Path) -> None:
    """Rewrite the reports in ``out`` from its ``results.json`` files, running nothing.

    ``out``: one run's folder, or :func:`run_seeds`' folder (each ``seed-*`` report, then the mean
    over seeds).
    """
    out = Path(out)
    folders = sorted(out.glob("seed-*/")) or [out]
    for folder in folders:
        if not (folder / "results.json").exists():
            raise FileNotFoundError(f"no results.json in {folder}: run the benchmark there first")
        write_report(json.loads((folder / "results.json").read_text()), folder)
    if folders != [out]:
        write_seed_report(seed_reports(out), out)


def _run_worker(method: str, settings: Settings) -> dict:
    return run_worker("linearised_laplace.experiments.classification", method, asdict(settings))


def main() -> None:
    """Worker entry point: ``python -m linearised_laplace.experiments.classification METHOD SETTINGS``."""
    method, raw = sys.argv[1], json.loads(sys.argv[2])
    raw["methods"], raw["angles"] = tuple(raw["methods"]), tuple(raw["angles"])
    print(json.dumps(evaluate(method, Settings(**raw))))


if __name__ == "__main__":
    main()
