"""Scale and speed of sampled linearised Laplace, side by side with laplace-torch and exact inference.

Sections (each case runs in its own process, so its peak memory is its own):

* ``ratio`` — one sampler epoch per posterior sample ÷ one training epoch (forward + backward, Adam)
  of the same network on the same data: the CNN and the BatchNorm ResNet on Fashion-MNIST.
* ``dimension`` — time and peak memory against the number of weights ``d`` (two-hidden-layer MLPs,
  d ≈ 3k, 30k, 300k, 3M) for sampled LLA, ``ExactLaplace`` and laplace-torch's full, Kronecker and
  diagonal Laplace with each of its GGN backends; predictive variance against exact where exact fits.
* ``data`` — peak memory of sampled LLA against the number of training points at fixed ``d``.
* ``batching`` — loop vs vmap over K tangents (``benchmarks/tangent_batching.py``'s measurement).
* ``resnet18`` — the seed paper's architecture: a ResNet-18 from ``transformers``' ``ResNetConfig``
  (basic blocks [2, 2, 2, 2], 11.2M weights, 32×32 inputs, one thread), wrapped to return
  ``.logits``: sampler epoch per sample ÷ training epoch, with and without set-up, next to the
  floor of one JVP + one VJP per sample measured in the same run (``make peers`` installs
  ``transformers``).

Every sampled fit here runs matrix-free (``feature_memory_gib=0``), as it must at scale, even where
the training features would fit in memory.

Timing: one protocol, :mod:`linearised_laplace.experiments.timing`. What a ratio compares (the
``ratio`` and ``resnet18`` sections) is timed by ``measure`` in one process, after a warm-up run,
over repeats, and reported as medians of wall and CPU seconds; a fit too long to repeat (the
``dimension`` and ``data`` sections, where peak memory is also the first run's) is timed once by
``stopwatch``, its CPU seconds beside its wall seconds.

Run: ``python benchmarks/scaling.py [--sections ...] [--device cuda]``. Writes
``results/scaling-<section>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _report import RESULTS, STARTED, markdown_table, write  # noqa: E402
from torch import nn  # noqa: E402

import linearised_laplace as lla  # noqa: E402
from linearised_laplace.experiments.datasets import fashion_mnist  # noqa: E402
from linearised_laplace.experiments.models import build  # noqa: E402
from linearised_laplace.experiments.timing import measure, stopwatch  # noqa: E402
from linearised_laplace.experiments.training import TrainConfig, train_map  # noqa: E402
from linearised_laplace.experiments.workers import failure  # noqa: E402

WIDTHS = {"3k": 4, "20k": 25, "30k": 36, "300k": 270, "3M": 1400}  # 2 hidden layers, 784 inputs
EXACT_SIZES = ("3k", "20k")  # at 30k ExactLaplace holds three dense 7.2 GB float64 matrices
PRIOR_PRECISION = 1.0
N_TEST = 200
TIMEOUT = 1800
PEER_TIMEOUT = 300  # laplace-torch beyond d = 3k: a timeout is reported as "> 300 s"
REPEATS, WARMUP = 3, 1  # the timing protocol of the ratio section (the ResNet-18 case's own)


def reset_peak() -> float:
    """Reset this process's peak resident memory to the current one; returns it [MB]."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak_mb()


def peak_mb() -> float:
    """Peak resident memory of this process since the last reset [MB] (Linux ``VmHWM``)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def data(n_train: int, device: str) -> tuple[tuple, torch.Tensor]:
    fm = fashion_mnist(n_train=n_train, n_val=100)
    x, y = fm.train
    return (x.to(device), y.to(device)), fm.test[0][:N_TEST].to(device)


def network(case: dict) -> nn.Module:
    torch.manual_seed(0)
    if case["model"] == "mlp":
        return build("mlp", (1, 28, 28), hidden=case["width"])
    return build(case["model"], (1, 28, 28), **({"depth": 8} if case["model"] == "resnet" else {}))


# ---------------------------------------------------------------- workers (one case each)
def matrix_free(net: nn.Module, k: int, solver: lla.SGD, **kwargs) -> lla.SampledLaplace:
    """The sampled method these cases time: ``k`` samples, matrix-free, at ``PRIOR_PRECISION``."""
    return lla.SampledLaplace(
        net,
        feature_memory_gib=0,
        n_samples=k,
        prior_precision=PRIOR_PRECISION,
        solver=solver,
        progress=False,
        **kwargs,
    )


def cost_ratio(case: dict) -> dict:
    """One training epoch and one sampler epoch per sample (difference of 3 and 1), timed alike.

    The training epoch and both fits are timed by
    :func:`~linearised_laplace.experiments.timing.measure` (``REPEATS`` repeats after
    ``WARMUP`` warm-up runs each); the sampler epoch comes from the fits' medians.
    """
    device = case["device"]
    train, _ = data(case["n_train"], device)
    net = network(case).to(device)
    nets = [copy.deepcopy(net) for _ in range(WARMUP + REPEATS)]  # copied before the clock
    copies = iter(nets)
    _, epoch = measure(
        lambda: train_map(next(copies), train, TrainConfig(epochs=1), progress=False),
        repeats=REPEATS,
        warmup=WARMUP,
        sync=lambda: sync(device),
    )

    def fit(n_epochs: int) -> None:
        solver = lla.SGD(n_epochs=n_epochs, residual=False, batch_size=128)
        la = matrix_free(nets[0], case["k"], solver, tangent_batching=case["batching"])
        la.fit(train)

    row = epoch.record("train epoch ")  # the fits linearise the first copy, trained one epoch
    for n_epochs in (1, 3):
        _, timing = measure(
            lambda n_epochs=n_epochs: fit(n_epochs),
            repeats=REPEATS,
            warmup=WARMUP,
            sync=lambda: sync(device),
        )
        row |= timing.record(f"{n_epochs}-epoch fit ")
    for clock in ("wall", "CPU"):
        difference = row[f"3-epoch fit {clock} [s]"] - row[f"1-epoch fit {clock} [s]"]
        row[f"sampler epoch per sample {clock} [s]"] = difference / 2 / case["k"]
    return row


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fit_and_predict(case: dict) -> dict:
    """Fit one method on the MLP of ``case["width"]`` and compute predictive variances."""
    train, test = data(case["n_train"], "cpu")
    net = network(case)
    train_map(net, train, TrainConfig(epochs=3), progress=False)
    base = reset_peak()
    method = case["method"]
    with stopwatch() as clock:  # once: too long to repeat, and the peak memory is the first run's
        if method.startswith("lt-"):
            variance = laplace_torch_variance(net, train, test, method)
        else:
            if method == "exact":
                la = lla.ExactLaplace(net, prior_precision=PRIOR_PRECISION, progress=False)
            else:
                solver = lla.SGD(n_epochs=case["epochs"], batch_size=100)
                la = matrix_free(net, case["k"], solver)
            la.fit(train)
            variance = torch.cat([la.functional_variance(x) for x in test.split(20)])
    variance = variance.diagonal(dim1=-2, dim2=-1).double()
    path = RESULTS / "scaling-variances" / f"{case['d']}-{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(variance.tolist()))
    return {
        "seconds": clock.timing.wall_median,
        "CPU [s]": clock.timing.cpu_median,
        "peak memory [MB]": peak_mb(),
        "method memory [MB]": peak_mb() - base,
    }


def laplace_torch_variance(net: nn.Module, train, test, method: str) -> torch.Tensor:
    from laplace import Laplace
    from laplace.curvature import AsdlGGN, BackPackGGN, CurvlinopsGGN
    from torch.utils.data import DataLoader, TensorDataset

    _, structure, backend = method.split("-")
    backends = {"curvlinops": CurvlinopsGGN, "backpack": BackPackGGN, "asdl": AsdlGGN}
    la = Laplace(
        net,
        "classification",
        subset_of_weights="all",
        hessian_structure=structure,
        prior_precision=PRIOR_PRECISION,
        backend=backends[backend],
    )
    la.fit(DataLoader(TensorDataset(*train), batch_size=100), progress_bar=False)
    return torch.cat([la._glm_predictive_distribution(x)[1] for x in test.split(10)])


def peak_memory_against_n(case: dict) -> dict:
    """Peak memory of a sampled fit on ``n`` points, and above the loaded data."""
    train, _ = data(case["n_train"], "cpu")
    net = network(case)
    base = reset_peak()
    solver = lla.SGD(n_epochs=case.get("epochs", 1), batch_size=128)
    la = matrix_free(net, case["k"], solver)
    with stopwatch() as clock:  # once: the peak memory is the first run's
        la.fit(train)
    return {
        "seconds": clock.timing.wall_median,
        "CPU [s]": clock.timing.cpu_median,
        "data loaded [MB]": base,
        "peak memory [MB]": peak_mb(),
        "method memory [MB]": peak_mb() - base,
    }


def resnet18(case: dict) -> dict:
    """Training epoch, JVP + VJP floors and sampler fits of a transformers ResNet-18, timed alike.

    Each is timed by :func:`~linearised_laplace.experiments.timing.measure` in this one process,
    after the case's warm-up runs, over its repeats (``fit repeats`` for the sampler fits): the
    floor is as warm and as repeated as what it is compared with. Returns each one's median wall
    and CPU seconds, and per-sample sampler costs from the medians.
    """
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], num_labels=10
    )
    torch.manual_seed(0)

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ResNetForImageClassification(config)

        def forward(self, x):
            return self.net(pixel_values=x).logits

    net = Logits().eval()
    n, k, batch = case["n_train"], case["k"], case["batch_size"]
    repeats, warmup = case["repeats"], case["warmup"]
    fit_repeats = case.get("fit repeats", repeats)
    gen = torch.Generator().manual_seed(0)
    train = (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    timings = {}

    copies = iter([copy.deepcopy(net) for _ in range(warmup + repeats)])  # copied before the clock
    epoch = TrainConfig(epochs=1, batch_size=batch)
    _, timings["train epoch"] = measure(
        lambda: train_map(next(copies), train, epoch, progress=False),
        repeats=repeats,
        warmup=warmup,
    )

    lin = lla.Linearisation(net, tangent_batching="loop")

    def floor(tangents: torch.Tensor) -> None:
        """One JVP and one VJP of ``tangents`` per batch of an epoch, batched as the sampler is."""
        for x in train[0].split(batch):
            _, jv = lin.jvp(x, tangents)
            lin.pullback(x)[1](jv)

    one, many = torch.randn(1, lin.n_params), torch.randn(k, lin.n_params)
    _, timings["JVP + VJP epoch"] = measure(lambda: floor(one), repeats=repeats, warmup=warmup)
    _, timings["K-tangent JVP + VJP epoch"] = measure(
        lambda: floor(many), repeats=repeats, warmup=warmup
    )

    def fit(n_epochs: int) -> None:
        la = lla.SampledLaplace(
            net,
            feature_memory_gib=0,
            n_samples=k,
            # no end-of-fit residual: its pass, and the start's, taken only when the end is worse
            # than zero (likelier after 1 epoch than after 3), would not cancel in the difference
            solver=lla.SGD(n_epochs=n_epochs, batch_size=batch, residual=False),
            tangent_batching="loop",
            progress=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lla.ConvergenceWarning)  # 1-3 epochs: not converged
            la.fit(train)

    for n_epochs in (1, 3):
        _, timings[f"{n_epochs}-epoch fit"] = measure(
            lambda n_epochs=n_epochs: fit(n_epochs), repeats=fit_repeats, warmup=warmup
        )

    row = {"D": lin.n_params}
    for name, timing in timings.items():
        row |= timing.record(f"{name} ")
        row[f"{name} wall, each repeat [s]"] = list(timing.wall)  # the spread behind the median
        row[f"{name} CPU, each repeat [s]"] = list(timing.cpu)
    for clock in ("wall", "CPU"):
        one_fit, three_fits = row[f"1-epoch fit {clock} [s]"], row[f"3-epoch fit {clock} [s]"]
        row[f"sampler epoch per sample {clock} [s]"] = (three_fits - one_fit) / (2 * k)
        row[f"fit per sample-epoch, with set-up {clock} [s]"] = three_fits / (3 * k)
        row[f"K-tangent floor per sample {clock} [s]"] = (
            row[f"K-tangent JVP + VJP epoch {clock} [s]"] / k
        )
    return row


WORKERS = {
    "ratio": cost_ratio,
    "dimension": fit_and_predict,
    "data": peak_memory_against_n,
    "resnet18": resnet18,
}


def run_case(section: str, case: dict) -> dict:
    """Run one case in a fresh process; failures and timeouts become the row's ``error``.

    Finished cases are kept in ``results/scaling-cases.jsonl``: an interrupted run resumes (and
    ``--fresh`` re-runs a section after the code changed).
    """
    key = json.dumps({"section": section, **case}, sort_keys=True)
    cache = RESULTS / "scaling-cases.jsonl"
    done_before = [json.loads(line) for line in cache.open()] if cache.exists() else []
    for entry in done_before:
        if entry["key"] == key:
            return entry["row"]
    row = _run_fresh(section, case)
    with cache.open("a") as f:
        f.write(json.dumps({"key": key, "row": row}) + "\n")
    return row


def _run_fresh(section: str, case: dict) -> dict:
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", section, json.dumps(case)],
            capture_output=True,
            text=True,
            timeout=case.get("timeout", TIMEOUT),
        )
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timeout ({case.get('timeout', TIMEOUT)} s)"}
    if done.returncode != 0:
        return {**case, "error": failure(done)}
    return {**case, **json.loads(done.stdout.strip().splitlines()[-1]), "provenance": STARTED}


# ---------------------------------------------------------------- sections
def ratio_section(device: str) -> None:
    rows = []
    for model in ("cnn", "resnet"):
        for batching in ("loop", "vmap"):
            n_train = 2048 if device == "cpu" else 20000  # the GPU needs more work per epoch
            case = {"model": model, "n_train": n_train, "k": 8, "batching": batching}
            row = run_case("ratio", {**case, "device": device})
            if "error" not in row and "train epoch wall [s]" not in row:
                row["error"] = "cached before the timing protocol: rerun with --fresh"
            if "error" not in row:
                for clock in ("wall", "CPU"):
                    row[f"ratio ({clock})"] = (
                        row[f"sampler epoch per sample {clock} [s]"]
                        / row[f"train epoch {clock} [s]"]
                    )
                row["ratio"] = row["ratio (wall)"]  # the unqualified key, as before
            rows.append(row)
    columns = ["model", "batching"]
    for name in ("train epoch", "1-epoch fit", "3-epoch fit", "sampler epoch per sample"):
        columns += [f"{name} wall [s]", f"{name} CPU [s]"]
    columns += ["ratio (wall)", "ratio (CPU)"]
    title = f"# Cost ratio: sampler epoch per sample / training epoch ({device})\n\n"
    note = (
        f"Side by side, in one worker process per row: {n_train:,} Fashion-MNIST points, batch "
        "128, K = 8 samples. The training epoch and the fits of 1 and 3 epochs are each timed by "
        f"`linearised_laplace.experiments.timing.measure`: {WARMUP} untimed warm-up run, then "
        f"{REPEATS} timed repeats; the table gives median wall and CPU (process) seconds. The "
        "sampler epoch is the difference of the fits' medians (so the noise pass and the "
        "step-size estimate cancel), divided by K; the ratios are of medians. The physical limit "
        "is about 1.3–2 (one JVP + one VJP against one forward + one backward).\n\n"
    )
    write(
        f"scaling-ratio-{device}",
        {"rows": rows},
        title + note + markdown_table(rows, columns + ["error"]),
    )


RESNET18_RATIOS = {  # name: (numerator, denominator), each a median of the worker's row
    "floor ÷ train": ("JVP + VJP epoch", "train epoch"),
    "sampler ÷ train": ("sampler epoch per sample", "train epoch"),
    "with set-up ÷ train": ("fit per sample-epoch, with set-up", "train epoch"),
    "sampler ÷ floor": ("sampler epoch per sample", "JVP + VJP epoch"),
    "sampler ÷ K-tangent floor": ("sampler epoch per sample", "K-tangent floor per sample"),
}


def resnet18_section() -> None:
    case = {"n_train": 128, "k": 2, "batch_size": 32, "repeats": 3, "warmup": 1, "timeout": 3600}
    row = run_case("resnet18", case)
    ratios = []
    if "error" not in row:
        for name, (num, den) in RESNET18_RATIOS.items():
            for clock in ("wall", "CPU"):
                row[f"{name} ({clock})"] = row[f"{num} {clock} [s]"] / row[f"{den} {clock} [s]"]
            row[name] = row[f"{name} (wall)"]  # the unqualified key, as before: of wall medians
            ratios.append(
                {"ratio": name, "wall": row[f"{name} (wall)"], "CPU": row[f"{name} (CPU)"]}
            )
    measured = ["train epoch", "JVP + VJP epoch", "K-tangent JVP + VJP epoch", "1-epoch fit"]
    measured += ["3-epoch fit"]
    derived = {
        "sampler epoch per sample": "(3-epoch − 1-epoch fit) ÷ 2K",
        "fit per sample-epoch, with set-up": "3-epoch fit ÷ 3K",
        "K-tangent floor per sample": "K-tangent JVP + VJP epoch ÷ K",
    }
    times = [
        {
            "what": name,
            "wall [s]": row.get(f"{name} wall [s]", ""),
            "CPU [s]": row.get(f"{name} CPU [s]", ""),
            "repeats": row.get(f"{name} repeats", derived.get(name, "")),
            "warm-up": row.get(f"{name} warm-up", ""),
        }
        for name in measured + list(derived)
    ]
    k, fit_repeats = case["k"], case.get("fit repeats", case["repeats"])
    row.setdefault("D", 11181642)  # for the note of a failed run
    note = (
        "# ResNet-18 (transformers ResNetConfig, basic blocks [2, 2, 2, 2]): sampler cost\n\n"
        f"D = {row['D']:,} weights; 128 random 32×32 images, batch 32, one thread, K = "
        f"{k} samples. Everything below was timed in one worker process by the same protocol "
        f"(`linearised_laplace.experiments.timing.measure`): {case['warmup']} untimed warm-up "
        f"run, then {case['repeats']} timed repeats ({fit_repeats} for the sampler fits); the "
        "tables give the median wall and CPU (process) seconds, and every ratio is of medians. "
        "The floor is one JVP + one VJP of one tangent per batch over the epoch, warm and repeated "
        f"like the training epoch and the fits it is compared with; the K-tangent floor pushes "
        f"the K = {k} tangents through as the sampler does (one forward for the VJPs of all K), "
        "divided by K. The sampler epoch per sample is the difference of the medians of fits of "
        "3 and 1 epochs over 2K (the noise pass, the preconditioner's sketch and the step-size "
        "estimate cancel); 'with set-up' divides the whole 3-epoch fit by 3K. The fits skip the "
        "end-of-fit residual (`SGD(residual=False)`), whose pass would not cancel in the "
        "difference; a default fit adds it (one more pass of K JVPs + VJPs). The JSON keeps every "
        "repeat's seconds beside the medians.\n\n"
    )
    if "error" not in row:
        spread = [
            max(row[f"{fit} CPU, each repeat [s]"]) - min(row[f"{fit} CPU, each repeat [s]"])
            for fit in ("1-epoch fit", "3-epoch fit")
        ]
        row["sampler epoch per sample CPU uncertainty [s]"] = sum(spread) / (4 * k)
        note += (
            f"The fits' repeats spread over {spread[0]:.1f} s (1 epoch) and {spread[1]:.1f} s "
            f"(3 epochs) of CPU time, against a difference of medians of "
            f"{row['3-epoch fit CPU [s]'] - row['1-epoch fit CPU [s]']:.1f} s: the sampler epoch "
            "per sample is uncertain by about "
            f"±{row['sampler epoch per sample CPU uncertainty [s]']:.1f} s, so its ratios are "
            "rough; CPU time is the less noisy clock here.\n\n"
        )
    if "error" in row:
        text = note + markdown_table([row], ["error"])
    else:
        text = (
            note
            + markdown_table(times, ["what", "wall [s]", "CPU [s]", "repeats", "warm-up"])
            + "\n\n"
            + markdown_table(ratios, ["ratio", "wall", "CPU"])
        )
    write("scaling-resnet18", {"rows": [row]}, text, made=row.get("provenance"))


def dimension_section(quick: bool) -> None:
    sizes = ["3k", "20k"] if quick else list(WIDTHS)
    methods = ["sampled", "exact"] + [
        f"lt-{s}-{b}" for s in ("full", "kron", "diag") for b in ("curvlinops", "backpack", "asdl")
    ]
    rows, timed_out = [], set()
    for size in sizes:
        big = size in ("300k", "3M")
        for method in methods:
            if method == "exact" and size not in EXACT_SIZES:
                rows.append({"d": size, "method": method, "error": "skipped: 3 dense d×d > 24 GB"})
                continue
            if method in timed_out and not (big and method.startswith("lt-full")):
                # (full Laplace at d ≥ 300k is still tried: it fails at once, for memory)
                rows.append(
                    {"d": size, "method": method, "error": "skipped: timed out at a smaller d"}
                )
                continue
            case = {
                "d": size,
                "model": "mlp",
                "width": WIDTHS[size],
                "method": method,
                "n_train": 1000,
                "k": 16 if big else 32,
                "epochs": 10 if big else 100,
            }
            if method.startswith("lt-") and size != "3k":
                case["timeout"] = PEER_TIMEOUT
            rows.append(run_case("dimension", case))
            print(rows[-1], flush=True)
            if rows[-1].get("error", "").startswith("timeout"):
                timed_out.add(method)
    for row in rows:  # predictive error against exact where exact ran
        exact = RESULTS / "scaling-variances" / f"{row['d']}-exact.json"
        mine = RESULTS / "scaling-variances" / f"{row['d']}-{row['method']}.json"
        if "error" in row or not exact.exists() or not mine.exists():
            continue
        ref = torch.tensor(json.loads(exact.read_text()))
        got = torch.tensor(json.loads(mine.read_text()))
        row["variance error (mean)"] = float((got.mean() - ref.mean()).abs() / ref.mean())
        row["variance error (median)"] = float(((got - ref).abs() / ref).median())
    for size in sizes:
        sampled = [r["seconds"] for r in rows if r["d"] == size and r["method"] == "sampled"]
        for row in rows:
            if row["d"] == size and "seconds" in row and sampled:
                row["time / sampled"] = row["seconds"] / sampled[0]
    columns = ["d", "method", "seconds", "CPU [s]", "time / sampled", "peak memory [MB]"]
    columns += ["variance error (mean)", "variance error (median)", "error"]
    text = (
        "# Time and memory against the number of weights d\n\n"
        "Two-hidden-layer ReLU MLPs on 1,000 Fashion-MNIST points, prior precision 1, predictive "
        f"variances on {N_TEST} test points. Sampled LLA: K = 32 samples and 100 SGD epochs "
        "(d ≤ 30k), K = 16 and 10 epochs (d ≥ 300k). laplace-torch 0.3 with each GGN backend "
        "(`lt-<structure>-<backend>`). Variance error: relative error of the mean predictive "
        "variance against `ExactLaplace` (mean), and the median per-output relative error "
        "(sampled: its Monte-Carlo floor is about √(2/K) = 25% at K = 32). Each fit and predictive "
        "is timed once (`timing.stopwatch`: too long to repeat, and the peak memory is the first "
        "run's): `seconds` is wall time, `CPU [s]` the process's CPU time.\n\n"
    )
    write("scaling-dimension", {"rows": rows}, text + markdown_table(rows, columns))
    title = "sampled LLA: 100 SGD epochs for d ≤ 30k, 10 beyond; missing points: timeout or OOM"
    plot(rows, "d", "scaling-dimension.png", list(sizes), title)


def data_section(quick: bool) -> None:
    sizes = [1000, 10000] if quick else [1000, 5000, 20000, 60000]
    rows = []
    for n in sizes:
        # the same number of SGD steps for every n (the allocator's high-water mark grows with the
        # steps taken, not with n): one epoch of the largest set
        case = {"model": "mlp", "width": 256, "n_train": n, "k": 16, "epochs": -(-sizes[-1] // n)}
        rows.append(run_case("data", case))
        print(rows[-1], flush=True)
    first = rows[0].get("method memory [MB]")
    for row in rows:
        if first and "method memory [MB]" in row:
            row["growth"] = row["method memory [MB]"] / first - 1
    columns = ["n_train", "seconds", "CPU [s]", "data loaded [MB]", "peak memory [MB]"]
    columns += ["method memory [MB]", "growth", "error"]
    text = (
        "# Peak memory of sampled LLA against the number of training points\n\n"
        "MLP 784-256-256-10 (d = 269k), K = 16 samples, the same number of SGD steps for every n "
        "(one epoch of the largest set). `method memory` is the peak resident memory above what "
        "the process held once the data were loaded. Each fit is timed once (`timing.stopwatch`): "
        "`seconds` is wall time, `CPU [s]` the process's CPU time.\n\n"
    )
    write("scaling-data", {"rows": rows}, text + markdown_table(rows, columns))


def batching_section() -> None:
    import tangent_batching

    tangent_batching.main()


STYLES = {"sampled": ("black", "-"), "exact": ("tab:orange", "-"), "full": ("tab:red", None)}
STYLES |= {"kron": ("tab:blue", None), "diag": ("tab:green", None)}
BACKEND_LINES = {"curvlinops": ":", "backpack": "--", "asdl": "-."}


def plot(rows: list[dict], key: str, name: str, order: list, title: str) -> None:
    """Time and peak memory against ``key``: colour by method or structure, line by backend."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and "seconds" in r]
        xs = [order.index(r[key]) for r in mine]
        parts = method.split("-")
        color, line = STYLES[parts[1] if len(parts) == 3 else method]
        style = {"color": color, "ls": line or BACKEND_LINES[parts[2]], "marker": "o"}
        if method == "sampled":
            style["lw"] = 2.5
        axes[0].plot(xs, [r["seconds"] for r in mine], label=method, **style)
        axes[1].plot(xs, [r["peak memory [MB]"] for r in mine], label=method, **style)
    for ax, label in zip(axes, ("time [s]", "peak memory [MB]"), strict=True):
        ax.set_xticks(range(len(order)), order)
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", nargs="+", default=["ratio", "dimension", "data", "batching", "resnet18"]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="the two smallest sizes only")
    parser.add_argument(
        "--fresh", action="store_true", help="re-run the sections' cases cached by an earlier run"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        section, case = args.worker
        print(json.dumps(WORKERS[section](json.loads(case))))
        return
    cache = RESULTS / "scaling-cases.jsonl"
    if args.fresh and cache.exists():
        kept = [
            line
            for line in cache.read_text().splitlines()
            if json.loads(json.loads(line)["key"])["section"] not in args.sections
        ]
        cache.write_text("".join(f"{line}\n" for line in kept))
    for section in args.sections:
        if section == "ratio":
            ratio_section(args.device)
        elif section == "resnet18":
            resnet18_section()
        elif section == "dimension":
            dimension_section(args.quick)
        elif section == "data":
            data_section(args.quick)
        else:
            batching_section()


if __name__ == "__main__":
    main()
