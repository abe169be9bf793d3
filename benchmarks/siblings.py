"""Siblings on one network: subnetwork, Nyström (ELLA), sampled (primal and dual) and exact LLA.

A small CNN (D = 3,818) is trained on scikit-learn's digits (1,200 train / 597 test). Every method
linearises the same trained network, learns its prior precision by EM (exact, or sample-based for
the sampled methods) and is scored on the test set: accuracy, NLL, ECE, joint log-likelihood of
random κ-tuples (κ = 1…5) and the dyadic joint log-likelihood (κ = 10), with fit time and the peak
memory of the fit. Each method runs in its own process, so that peak memories do not mix.

laplace-torch is an optional peer: when it imports (see `make peers`), its structures run on the
same network (KFAC, diagonal, last-layer and full Laplace, each with marginal-likelihood and with
validation tuning, its SubnetLaplace and its ELLA); when it does not, the benchmark says so and
skips them. Run: `python benchmarks/siblings.py` (`--only METHOD ...` re-runs those rows and keeps
the others).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _report import RESULTS, markdown_table, write
from safetensors.torch import load_file, save_file
from torch import nn

import linearised_laplace as lla
from linearised_laplace import metrics
from linearised_laplace.experiments import peers
from linearised_laplace.experiments.timing import stopwatch

SAMPLES = 64
OURS = [
    "MAP",
    "exact-em",
    "exact-val",
    "sampled-em",
    "sampled-dual-em",
    "subnetwork-em",
    "subnetwork-diaglaplace-em",
    "nystrom-em",
    "nystrom-val",
]
PEERS = list(peers.PEER_METHODS)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val, test = perm[:1000], perm[1000:1200], perm[1200:]
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def train(path: Path) -> None:
    (x, y), _, _ = digits()
    net = cnn()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(400):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def scores(log_probs: torch.Tensor, y: torch.Tensor) -> dict:
    """Metrics from per-sample log-probabilities ``[S, N, C]`` (log-softmax of function samples)."""
    probs = log_probs.exp().mean(0)
    row = {
        "acc": metrics.accuracy(probs, y),
        "NLL": -float(metrics.marginal_log_likelihood(log_probs, y).mean()),
        "ECE": metrics.expected_calibration_error(probs, y),
    }
    for kappa in range(1, 6):  # distinct κ-tuples (τ = κ, one shuffle), as the committed results
        joint = metrics.joint_log_likelihood(log_probs, y, kappa, tau=kappa, n_shuffles=1)
        row[f"joint κ={kappa}"] = float(joint.mean())
    row["dyadic κ=10"] = float(metrics.dyadic_joint_log_likelihood(log_probs, y, 10).mean())
    return row


def zero_curvature_share(net: nn.Module, train_data, indices: torch.Tensor) -> float:
    """Share of the chosen weights whose GGN diagonal is (numerically) zero on the training data."""
    from linearised_laplace.coordinates.g_prior import ggn_diagonal_exact
    from linearised_laplace.coordinates.ranking import ZERO_CURVATURE

    lin = lla.Linearisation(net)
    prior = lla.make_prior(1.0, lin.selection.group_ids, lin.selection.names)
    diagonal = ggn_diagonal_exact(
        lla.LinearGaussianModel(lin, lla.Categorical(), prior, lla.Data(train_data))
    )
    dead = diagonal <= ZERO_CURVATURE * diagonal.mean()
    return float(dead[indices].double().mean())


def subnetwork_indices(la: lla.SubnetworkLaplace) -> torch.Tensor:
    """Flat indices of a fitted subnetwork into all parameters."""
    selection = la.linearisation.selection
    offsets = dict.fromkeys(selection.names, 0)
    start = 0
    for name, p in la.model.named_parameters():
        offsets[name] = start
        start += p.numel()
    flat = torch.cat(
        [
            offsets[n] + torch.arange(s.numel())
            for n, s in zip(selection.names, selection.shapes, strict=True)
        ]
    )
    return flat[selection.indices]


def ours(method: str, net: nn.Module, train_data, val_data, test_data) -> tuple[torch.Tensor, dict]:
    kw = {"n_samples": SAMPLES, "progress": False}
    if method == "MAP":
        with torch.no_grad():
            return torch.log_softmax(net(test_data[0]), -1)[None], {}
    name, tuning = method.rsplit("-", 1)
    la = {
        "exact": lambda: lla.ExactLaplace(net, **kw),
        "sampled": lambda: lla.SampledLaplace(net, space="primal", **kw),
        "sampled-dual": lambda: lla.SampledLaplace(
            net, space="dual", solver=lla.CG(rtol=1e-4), **kw
        ),
        "subnetwork": lambda: lla.SubnetworkLaplace(net, subnetwork="swag", n_params=1000, **kw),
        "subnetwork-diaglaplace": lambda: lla.SubnetworkLaplace(
            net, subnetwork="diagonal_laplace", n_params=1000, **kw
        ),
        "nystrom": lambda: lla.NystromLaplace(net, n_points=1000, rank=20, **kw),
    }[name]()
    if tuning == "em":
        la.optimize_prior_precision(train_data)
    else:
        la.fit(train_data).select_prior_precision(val_data)
    extras = {}
    if isinstance(la, lla.SubnetworkLaplace):
        extras["zero-curvature chosen"] = zero_curvature_share(
            net, train_data, subnetwork_indices(la)
        )
    return torch.log_softmax(la.predictive_samples(test_data[0]), -1), extras


def peer(method: str, net: nn.Module, train_data, val_data, test_data) -> tuple[torch.Tensor, dict]:
    la = peers.fit_laplace_torch(method, net, train_data, val_data)
    log_probs = torch.log_softmax(peers.function_sampler(la, net, SAMPLES)(test_data[0]), -1)
    extras, indices = {}, peers.subnetwork_indices(la)
    if indices is not None:
        extras["zero-curvature chosen"] = zero_curvature_share(net, train_data, indices)
    return log_probs, extras


def run_one(method: str, weights: Path) -> dict:
    torch.set_num_threads(2)
    train_data, val_data, test_data = digits()
    net = cnn()
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with stopwatch() as clock:  # once: the peak memory is the first run's
        if method in PEERS:
            log_probs, extras = peer(method, net, train_data, val_data, test_data)
        else:
            log_probs, extras = ours(method, net, train_data, val_data, test_data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        map_probs = net(test_data[0]).softmax(-1).double()
    shift = 0.5 * (log_probs.double().exp().mean(0) - map_probs).abs().sum(-1).mean()
    return {
        "method": method,
        "fit [s]": clock.timing.wall_median,
        "fit CPU [s]": clock.timing.cpu_median,
        "peak memory [MB]": max(peak - before, 0) / 1024,
        **scores(log_probs.double(), test_data[1]),
        "TV to MAP": float(shift),
        **extras,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", help="run one method (internal)")
    parser.add_argument("--weights", type=Path, help="trained weights (internal)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="METHOD",
        help="re-run these methods only, keeping the other rows of results/siblings.json",
    )
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_one(args.method, args.weights)))
        return
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "cnn.safetensors"
        train(weights)
        methods = args.only or OURS + (PEERS if peers.available() else [])
        rows = []
        for method in methods:
            done = subprocess.run(
                [sys.executable, __file__, "--method", method, "--weights", str(weights)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
            )
            if done.returncode != 0:
                print(f"{method} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                rows.append({"method": method, "error": done.stderr.strip().splitlines()[-1]})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    if args.only:
        fresh = {r["method"]: r for r in rows}
        kept = json.loads((RESULTS / "siblings.json").read_text())["rows"]
        rows = [fresh.pop(r["method"], r) for r in kept] + list(fresh.values())
    peers_note = (
        "laplace-torch ran on the same network (rows `lt-*`)."
        if peers.available()
        else "laplace-torch is not installed, so its rows are skipped (install it with `make peers`)."
    )
    columns = ["method", "fit [s]", "fit CPU [s]", "peak memory [MB]", "acc", "NLL", "ECE"]
    columns += [f"joint κ={k}" for k in range(1, 6)] + ["dyadic κ=10", "TV to MAP"]
    text = (
        "# Siblings on one CNN (digits, D = 3,818): subnetwork, Nyström, sampled, exact\n\n"
        "1,000 training, 200 validation and 597 test points. `-em`: prior precision by EM (exact, "
        "or sample-based for `sampled-*`); `-val`: by validation NLL on a grid 10⁻⁴…10⁴ (21 "
        "points, as laplace-torch's `gridsearch`); `-marglik`: laplace-torch's marginal-likelihood "
        "optimisation. Subnetworks: 1,000 weights by largest diagonal-SWAG variance. Nyström/ELLA: "
        f"M = 1,000 points, rank 20. {SAMPLES} posterior samples for every predictive; "
        "joint κ = mean over random disjoint κ-tuples of the tuple's joint log-likelihood; dyadic "
        "κ = 10 as in the neural testbed. Peak memory: growth of the process's peak RSS during "
        "the fit (each method in its own process). Each fit is timed once (`timing.stopwatch`): "
        "`fit [s]` is wall time, `fit CPU [s]` the process's CPU time (two threads). "
        f"{peers_note}\n\n"
        + markdown_table(rows, columns)
        + "\n\n## Subnetwork selection\n\nShare of the 1,000 chosen weights with zero curvature "
        "on the training data (GGN diagonal ≤ 10⁻⁸ × its mean), and how far the predictive "
        "moves from the MAP (mean total-variation distance of the predictive probabilities).\n\n"
        + markdown_table(
            [r for r in rows if "zero-curvature chosen" in r],
            ["method", "zero-curvature chosen", "TV to MAP", "NLL"],
        )
    )
    write("siblings", {"rows": rows}, text)


if __name__ == "__main__":
    main()
