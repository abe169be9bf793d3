"""Loop vs vmap over K tangents: time of one JVP + VJP pass of K vectors on a batch of 128.

Decides `Linearisation(tangent_batching=...)`'s default on this CPU. Run: `python benchmarks/tangent_batching.py`.
"""

from __future__ import annotations

import torch
from _report import markdown_table, write
from torch import nn

from linearised_laplace import Linearisation
from linearised_laplace.experiments.timing import Timing, measure


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


REPEATS, WARMUP = 3, 1  # the protocol's defaults


def seconds(fn) -> Timing:
    """Wall and CPU seconds of ``fn``: the protocol's medians over ``REPEATS`` after ``WARMUP``."""
    return measure(fn, repeats=REPEATS, warmup=WARMUP)[1]


def main() -> None:
    torch.manual_seed(0)
    cases = {
        "MLP 64-256-256-10": (mlp(), torch.randn(128, 64)),
        "CNN on 28x28": (cnn(), torch.randn(128, 1, 28, 28)),
    }
    rows = []
    for name, (net, x) in cases.items():
        lins = {mode: Linearisation(net, tangent_batching=mode) for mode in ("loop", "vmap")}
        forward = seconds(lambda net=net, x=x: net(x))
        for k in (1, 4, 16, 64):
            v = torch.randn(k, lins["loop"].n_params)
            u = torch.randn(k, 128, 10)
            times = {
                mode: seconds(lambda lin=lin, v=v, u=u, x=x: (lin.jvp(x, v), lin.vjp(x, u)))
                for mode, lin in lins.items()
            }
            loop, vmap = times["loop"], times["vmap"]
            rows.append(
                {
                    "network": name,
                    "K": k,
                    "loop [ms]": 1e3 * loop.wall_median,
                    "loop CPU [ms]": 1e3 * loop.cpu_median,
                    "vmap [ms]": 1e3 * vmap.wall_median,
                    "vmap CPU [ms]": 1e3 * vmap.cpu_median,
                    "vmap / loop": vmap.wall_median / loop.wall_median,
                    "vmap / loop (CPU)": vmap.cpu_median / loop.cpu_median,
                    "loop per tangent / forward": loop.wall_median / k / forward.wall_median,
                    "repeats": REPEATS,
                    "warm-up": WARMUP,
                }
            )
    columns = [c for c in rows[0] if c not in ("repeats", "warm-up")]
    text = (
        "# Loop vs vmap over K tangents (one JVP + one VJP of K vectors, batch 128)\n\n"
        "Measured side by side in one run by `linearised_laplace.experiments.timing.measure`: "
        f"{WARMUP} untimed warm-up run, then {REPEATS} timed repeats of each case; times are "
        "medians of wall (`[ms]`) and CPU (process, `CPU [ms]`) time, ratios are of medians "
        "(the forward too). `vmap / loop` > 1 means the loop is faster.\n\n"
        + markdown_table(rows, columns)
    )
    write("tangent_batching", {"rows": rows}, text)


if __name__ == "__main__":
    main()
