"""Every default, timed by stage: a new user's Fashion-MNIST CNN against its MAP training.

On ``n`` Fashion-MNIST training images (the classification benchmark's CNN, D = 20,490, trained
20 epochs with Adam and weight decay 1e-4), in one process on one thread:

- **MAP training**, timed ``--repeats`` times from the same initialisation (the first is kept as
  the network): the floor the issue's ratios divide by;
- for each family, ``SampledLaplace`` and ``ExactLaplace`` with every default
  (``optimize_prior_precision(loader)``, then ``n_samples=32``): the CPU and wall seconds of each
  stage (``em_costs``: set-up, EM, final samples), each EM step's α, its sample solve's iterations,
  whether EM converged, the memory plan, and test scores (accuracy, NLL, κ = 5 joint LL over 2,000
  test images);
- fidelity: the exact family refactorised at the sampled EM's α, and the two logit variances
  (mean trace of the functional covariance over 500 test images) at that α;
- with ``--plan``, the cost plan first (``la.plan(loader)``: a pilot on a tenth of the data for
  the sampler, flops for the dense family), its own CPU seconds, and each stage's measured time
  over its estimate.

``--model resnet`` runs a BatchNorm ResNet-14 of width 8 (D = 44,226; BatchNorm on running
statistics) instead of the CNN. Writes ``results/default_workflow[-<name>].{json,md}``.

    python benchmarks/default_workflow.py [--n 4000] [--families sampled,exact] [--name NAME]
        [--model cnn|resnet] [--plan]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _report import machine, markdown_table, write
from torch.utils.data import DataLoader, TensorDataset

import linearised_laplace as lla
from linearised_laplace.experiments.datasets import fashion_mnist
from linearised_laplace.experiments.models import ResNet, cnn
from linearised_laplace.experiments.training import TrainConfig, train_map
from linearised_laplace.metrics import accuracy, joint_log_likelihood

FAMILIES = {"sampled": lla.SampledLaplace, "exact": lla.ExactLaplace}
N_SAMPLES = 32
N_TEST, N_VARIANCE = 2000, 500
TRAINING = TrainConfig(epochs=20)
MODELS = {"cnn": cnn, "resnet": lambda shape: ResNet(shape, depth=14, width=8)}


def train(
    data, repeats: int, model: str = "cnn"
) -> tuple[torch.nn.Module, list[float], list[float]]:
    """The MAP (the first run), and every run's CPU and wall seconds."""
    torch.manual_seed(0)
    start = MODELS[model](data.image_shape)
    cpu, wall, net = [], [], None
    for _ in range(repeats):
        candidate = copy.deepcopy(start)
        c, w = time.process_time(), time.perf_counter()
        train_map(candidate, data.train, TRAINING, progress=False)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
        net = candidate if net is None else net
    return net, cpu, wall


def logit_variance(la, x: torch.Tensor) -> float:
    """Mean trace of the functional covariance ``[C, C]`` over ``x``."""
    return float(la.functional_variance(x).diagonal(dim1=-2, dim2=-1).sum(-1).double().mean())


def scores(la, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, NLL and the κ = 5 joint LL of the linearised predictive (its samples)."""
    f = la.predictive_samples(x)
    probs = f.softmax(-1).mean(0)
    nll = -float(probs.gather(1, y[:, None]).clamp_min(1e-12).log().mean())
    joint = float(joint_log_likelihood(f, y, kappa=5).mean())
    return {"accuracy": accuracy(probs, y), "NLL": nll, "joint LL κ=5": joint}


def run_family(name: str, net, loader, x, y, plan: bool = False) -> tuple[dict, object]:
    la = FAMILIES[name](net, "classification", n_samples=N_SAMPLES, seed=0)
    estimate = None
    if plan:
        c = time.process_time()
        cost_plan = la.plan(loader)
        cpu = time.process_time() - c
        estimate = {"stages": cost_plan.stages, "CPU [s]": cpu, "text": str(cost_plan)}
    c, w = time.process_time(), time.perf_counter()
    la.optimize_prior_precision(loader)
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    history = [
        {k: h.get(k) for k in ("step", "prior_precision", "cpu_seconds", "solve_steps", "solved")}
        for h in la.em_history
    ]
    row = {
        "family": name,
        "CPU [s]": cpu,
        "wall [s]": wall,
        "stages": la.em_costs,
        "EM steps": len(la.em_history) - 1,
        "converged": bool(la.em_history[-1].get("converged")),
        "alpha": float(la.prior_precision.mean()),
        "history": history,
        "memory plan": la.memory_plan.summary(),
        "solver": la.solve_info.summary() if getattr(la, "solve_info", None) else "Cholesky",
        "logit variance": logit_variance(la, x[:N_VARIANCE]),
        **scores(la, x, y),
    }
    if estimate is not None:
        row["plan"] = estimate
    return row, la


def plan_rows(rows: list[dict]) -> list[dict]:
    """Per family and stage: the plan's estimate, the measured time and their ratio (CPU)."""
    out = []
    for r in (r for r in rows if "plan" in r):
        for stage, measured in r["stages"].items():
            estimate = r["plan"]["stages"][stage]["cpu_seconds"]
            out.append(
                {
                    "family": r["family"],
                    "stage": stage,
                    "estimated CPU [s]": estimate,
                    "measured CPU [s]": measured["cpu_seconds"],
                    "measured / estimated": measured["cpu_seconds"] / estimate,
                    "plan's own CPU [s]": r["plan"]["CPU [s]"],
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--families", default="sampled,exact")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default=None)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--plan", action="store_true", help="record la.plan(loader) first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = fashion_mnist(n_train=args.n, n_val=0)
    x, y = data.test[0][:N_TEST], data.test[1][:N_TEST]
    net, train_cpu, train_wall = train(data, args.repeats, args.model)
    loader = DataLoader(TensorDataset(*data.train), batch_size=TRAINING.batch_size)
    rows, exact = [], None
    for name in args.families.split(","):
        row, la = run_family(name, net, loader, x, y, args.plan)
        rows.append(row)
        exact = la if name == "exact" else exact  # the sampled fit (and its Φ) is let go
        del la
    floor = sorted(train_cpu)[len(train_cpu) // 2]
    for row in rows:
        row["× MAP training CPU"] = row["CPU [s]"] / floor
    by = {row["family"]: row for row in rows}
    if "sampled" in by and "exact" in by:
        by["sampled"]["× exact CPU"] = by["sampled"]["CPU [s]"] / by["exact"]["CPU [s]"]
        by["sampled"]["α / exact α"] = by["sampled"]["alpha"] / by["exact"]["alpha"]
        exact.prior_precision = by["sampled"]["alpha"]  # refactorised from its GGN
        at_alpha = logit_variance(exact, x[:N_VARIANCE])
        by["sampled"]["exact logit variance at this α"] = at_alpha
        by["sampled"]["logit variance / exact's"] = by["sampled"]["logit variance"] / at_alpha
    payload = {
        "n": args.n,
        "model": args.model,
        "D": sum(p.numel() for p in net.parameters()),
        "training": {"epochs": TRAINING.epochs, "CPU [s]": train_cpu, "wall [s]": train_wall},
        "rows": rows,
        "machine": machine(),
    }
    columns = [
        "family", "CPU [s]", "× MAP training CPU", "× exact CPU", "EM steps", "converged",
        "alpha", "α / exact α", "logit variance / exact's", "accuracy", "NLL", "joint LL κ=5",
    ]  # fmt: skip
    stages = [
        {
            "family": r["family"],
            **{f"{s} CPU [s]": c["cpu_seconds"] for s, c in r["stages"].items()},
        }
        for r in rows
    ]
    steps = [
        {"family": r["family"], **h, "prior_precision": h["prior_precision"][0]}
        for r in rows
        for h in r["history"][1:]
    ]
    markdown = "\n".join(
        [
            f"# Every default on the Fashion-MNIST {TITLES[args.model]}, n = {args.n}",
            "",
            f"MAP training ({TRAINING.epochs} epochs): CPU {', '.join(f'{t:.1f}' for t in train_cpu)}"
            f" s (median {floor:.1f} s, the ratios' floor). One process, one thread; each family "
            f"runs `optimize_prior_precision(loader)` then draws {N_SAMPLES} samples, all "
            "defaults.",
            "",
            markdown_table(rows, columns),
            "",
            "## Stages (CPU seconds)",
            "",
            markdown_table(stages, list(stages[0])),
            "",
            "## EM steps",
            "",
            markdown_table(
                steps, ["family", "step", "prior_precision", "cpu_seconds", "solve_steps", "solved"]
            ),
            "",
            "## Memory plans",
            "",
            *[f"- {r['family']}: {r['memory plan']}" for r in rows],
            *plan_section(rows),
        ]
    )
    write("default_workflow" + (f"-{args.name}" if args.name else ""), payload, markdown)
    print(markdown)


TITLES = {"cnn": "CNN", "resnet": "BatchNorm ResNet-14 (width 8, D = 44,226)"}


def plan_section(rows: list[dict]) -> list[str]:
    """The cost plans against the measured stages, if they were recorded."""
    table = plan_rows(rows)
    if not table:
        return []
    texts = [f"```\n{r['plan']['text']}\n```" for r in rows if "plan" in r]
    return [
        "",
        "## Cost plans against the measured stages",
        "",
        markdown_table(table, list(table[0])),
        "",
        *texts,
    ]


if __name__ == "__main__":
    main()
