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

Run: ``python benchmarks/scaling.py [--sections ...] [--device cuda]``. Writes
``results/scaling-<section>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _report import RESULTS, markdown_table, write  # noqa: E402
from torch import nn  # noqa: E402

import linearised_laplace as lla  # noqa: E402
from linearised_laplace.experiments.datasets import fashion_mnist  # noqa: E402
from linearised_laplace.experiments.models import build  # noqa: E402
from linearised_laplace.experiments.training import TrainConfig, train_map  # noqa: E402
from linearised_laplace.experiments.workers import failure  # noqa: E402

WIDTHS = {"3k": 4, "20k": 25, "30k": 36, "300k": 270, "3M": 1400}  # 2 hidden layers, 784 inputs
EXACT_SIZES = ("3k", "20k")  # at 30k ExactLaplace holds three dense 7.2 GB float64 matrices
PRIOR_PRECISION = 1.0
N_TEST = 200
TIMEOUT = 1800
PEER_TIMEOUT = 300  # laplace-torch beyond d = 3k: a timeout is reported as "> 300 s"


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
    """Seconds of one training epoch and of one sampler epoch per sample (difference of 3 and 1)."""
    device = case["device"]
    train, _ = data(case["n_train"], device)
    net = network(case).to(device)
    train_map(net, train, TrainConfig(epochs=1), progress=False)  # warm-up
    epoch = []
    for _ in range(2):
        start = time.perf_counter()
        train_map(copy.deepcopy(net), train, TrainConfig(epochs=1), progress=False)
        sync(device)
        epoch.append(time.perf_counter() - start)

    def fit(n_epochs: int) -> float:
        solver = lla.SGD(n_epochs=n_epochs, residual=False, batch_size=128)
        la = matrix_free(net, case["k"], solver, tangent_batching=case["batching"])
        start = time.perf_counter()
        la.fit(train)
        sync(device)
        return time.perf_counter() - start

    fit(1)  # warm-up
    one, three = fit(1), fit(3)
    per_sample = (three - one) / 2 / case["k"]
    return {"train epoch [s]": min(epoch), "sampler epoch per sample [s]": per_sample}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fit_and_predict(case: dict) -> dict:
    """Fit one method on the MLP of ``case["width"]`` and compute predictive variances."""
    train, test = data(case["n_train"], "cpu")
    net = network(case)
    train_map(net, train, TrainConfig(epochs=3), progress=False)
    base = reset_peak()
    start = time.perf_counter()
    method = case["method"]
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
    seconds = time.perf_counter() - start
    variance = variance.diagonal(dim1=-2, dim2=-1).double()
    path = RESULTS / "scaling-variances" / f"{case['d']}-{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(variance.tolist()))
    return {
        "seconds": seconds,
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
    start = time.perf_counter()
    la.fit(train)
    return {
        "seconds": time.perf_counter() - start,
        "data loaded [MB]": base,
        "peak memory [MB]": peak_mb(),
        "method memory [MB]": peak_mb() - base,
    }


def resnet18(case: dict) -> dict:
    """Training epoch, JVP + VJP floor and sampler epoch per sample of a transformers ResNet-18."""
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
    gen = torch.Generator().manual_seed(0)
    train = (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    start = time.perf_counter()
    train_map(copy.deepcopy(net), train, TrainConfig(epochs=1, batch_size=batch), progress=False)
    epoch = time.perf_counter() - start
    lin = lla.Linearisation(net, tangent_batching="loop")
    tangent = torch.randn(1, lin.n_params)
    start = time.perf_counter()
    for x in train[0].split(batch):
        _, jv = lin.jvp(x, tangent)
        lin.pullback(x)[1](jv)
    floor = time.perf_counter() - start

    def fit(n_epochs: int) -> float:
        la = lla.SampledLaplace(
            net,
            feature_memory_gib=0,
            n_samples=k,
            solver=lla.SGD(n_epochs=n_epochs, batch_size=batch),
            tangent_batching="loop",
            progress=False,
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lla.ConvergenceWarning)  # 1-2 epochs: not converged
            la.fit(train)
        return time.perf_counter() - start

    one, three = fit(1), fit(3)
    return {
        "D": lin.n_params,
        "train epoch [s]": epoch,
        "JVP + VJP epoch [s]": floor,
        "sampler epoch per sample [s]": (three - one) / (2 * k),
        "fit per sample-epoch, with set-up [s]": three / (3 * k),
    }


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
    return {**case, **json.loads(done.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------- sections
def ratio_section(device: str) -> None:
    rows = []
    for model in ("cnn", "resnet"):
        for batching in ("loop", "vmap"):
            n_train = 2048 if device == "cpu" else 20000  # the GPU needs more work per epoch
            case = {"model": model, "n_train": n_train, "k": 8, "batching": batching}
            row = run_case("ratio", {**case, "device": device})
            if "error" not in row:
                row["ratio"] = row["sampler epoch per sample [s]"] / row["train epoch [s]"]
            rows.append(row)
    columns = ["model", "batching", "train epoch [s]", "sampler epoch per sample [s]", "ratio"]
    title = f"# Cost ratio: sampler epoch per sample / training epoch ({device})\n\n"
    note = (
        f"One run, side by side: {n_train:,} Fashion-MNIST points, batch 128, K = 8 samples. The "
        "sampler epoch is the difference of fits of 3 and 1 epochs (so the noise pass and the "
        "step-size estimate cancel), divided by K. The physical limit is about 1.3–2 (one JVP + "
        "one VJP against one forward + one backward).\n\n"
    )
    write(
        f"scaling-ratio-{device}",
        {"rows": rows},
        title + note + markdown_table(rows, columns + ["error"]),
    )


def resnet18_section() -> None:
    case = {"n_train": 128, "k": 2, "batch_size": 32, "timeout": 3600}
    row = run_case("resnet18", case)
    if "error" not in row:
        floor, epoch = row["JVP + VJP epoch [s]"], row["train epoch [s]"]
        row["floor ÷ train"] = floor / epoch
        row["sampler ÷ train"] = row["sampler epoch per sample [s]"] / epoch
        row["with set-up ÷ train"] = row["fit per sample-epoch, with set-up [s]"] / epoch
        row["sampler ÷ floor"] = row["sampler epoch per sample [s]"] / floor
    columns = [
        "D", "train epoch [s]", "JVP + VJP epoch [s]", "sampler epoch per sample [s]",
        "fit per sample-epoch, with set-up [s]", "floor ÷ train", "sampler ÷ train",
        "with set-up ÷ train", "sampler ÷ floor", "error",
    ]  # fmt: skip
    note = (
        "# ResNet-18 (transformers ResNetConfig, basic blocks [2, 2, 2, 2]): sampler cost\n\n"
        "128 random 32×32 images, batch 32, one thread, K = 2 samples. The sampler epoch per "
        "sample is the difference of fits of 3 and 1 epochs over 2K; 'with set-up' divides the "
        "whole 3-epoch fit (noise pass, step size, residuals) by 3K. The floor is one JVP + one "
        "VJP per batch, measured in the same run.\n\n"
    )
    write("scaling-resnet18", {"rows": [row]}, note + markdown_table([row], columns))


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
    columns = ["d", "method", "seconds", "time / sampled", "peak memory [MB]"]
    columns += ["variance error (mean)", "variance error (median)", "error"]
    text = (
        "# Time and memory against the number of weights d\n\n"
        "Two-hidden-layer ReLU MLPs on 1,000 Fashion-MNIST points, prior precision 1, predictive "
        f"variances on {N_TEST} test points. Sampled LLA: K = 32 samples and 100 SGD epochs "
        "(d ≤ 30k), K = 16 and 10 epochs (d ≥ 300k). laplace-torch 0.3 with each GGN backend "
        "(`lt-<structure>-<backend>`). Variance error: relative error of the mean predictive "
        "variance against `ExactLaplace` (mean), and the median per-output relative error "
        "(sampled: its Monte-Carlo floor is about √(2/K) = 25% at K = 32).\n\n"
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
    columns = ["n_train", "seconds", "data loaded [MB]", "peak memory [MB]"]
    columns += ["method memory [MB]", "growth", "error"]
    text = (
        "# Peak memory of sampled LLA against the number of training points\n\n"
        "MLP 784-256-256-10 (d = 269k), K = 16 samples, the same number of SGD steps for every n "
        "(one epoch of the largest set). `method memory` is the peak resident memory above what "
        "the process held once the data were loaded.\n\n"
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
