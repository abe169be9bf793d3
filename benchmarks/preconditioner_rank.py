"""The Nyström preconditioner's rank on the Table 1 CNNs: fixed ranks against ``"auto"``.

On a classification seed folder's MAP (retrained from its recorded settings, ``D = 20,490``), at
the α its committed ``sampled-default`` row converged to, one cold E-step of the library's
defaults (8 samples, ``em_rtol``, block CG, ``Φ`` held) per ``preconditioner_rank``: the rank the
sketch ended at, the CG iterations, and the CPU seconds of the set-up (building ``Φ`` and the
noise, the same for every rank, and the sketch) and of the E-step. ``"auto"`` starts at rank 100
and doubles while :func:`~linearised_laplace.solvers.preconditioner.worth_growing`. A run of some
ranks keeps the committed rows of the others. Writes
``results/preconditioner_rank-<network>.{json,md}``.

    OMP_NUM_THREADS=1 python benchmarks/preconditioner_rank.py fashion-mnist-cnn/calibrated/seed-0
        [--ranks 100,400,auto]
"""

from __future__ import annotations

import argparse
import json
import warnings

from _report import RESULTS, markdown_table, write
from em_rtol import network

import linearised_laplace as lla
from linearised_laplace.experiments.classification import DEFAULT_MEMORY_GIB
from linearised_laplace.solvers.preconditioner import RANK_SCALE


def e_step(net, train, alpha: float, rank: int | str) -> dict:
    """One cold E-step at ``alpha`` with CG preconditioned at ``rank``."""
    la = lla.SampledLaplace(
        net,
        prior_precision=alpha,
        n_samples=2,
        progress=False,
        exclude_norm=True,
        memory_gib=DEFAULT_MEMORY_GIB,
        solver=lla.CG(preconditioner_rank=rank),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lla.ConvergenceWarning)
        step = la.optimize_prior_precision(train, max_iter=1, start="current")[1]
    info = la.posterior.solve_info
    return {
        "preconditioner_rank": rank,
        "rank": info.preconditioner_rank,
        "CG steps": step["solve_steps"],
        "set-up CPU [s]": la.em_costs["set-up"]["cpu_seconds"],
        "E-step CPU [s]": step["cpu_seconds"],
        "γ̂": step["gamma"][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", help="a classification seed folder under benchmarks/results")
    parser.add_argument("--ranks", default="100,400,auto")
    parser.add_argument("--alpha", type=float, help="instead of the committed row's α")
    args = parser.parse_args()
    net, data, alpha = network(args.folder)  # the committed α, if the row is there
    alpha = alpha if args.alpha is None else args.alpha
    ranks = [r if r == "auto" else int(r) for r in args.ranks.split(",")]
    name = args.folder.replace("/", "-")
    path = RESULTS / f"preconditioner_rank-{name}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    for rank in ranks:
        rows = [r for r in rows if r["preconditioner_rank"] != rank]
        rows.append(e_step(net, data.train, alpha, rank))
        print(rows[-1], flush=True)
    rows.sort(key=lambda r: (r["preconditioner_rank"] == "auto", r["rank"]))
    base = rows[0]
    for r in rows:
        r["E-step / first's"] = r["E-step CPU [s]"] / base["E-step CPU [s]"]
        r["set-up + E-step / first's"] = (r["set-up CPU [s]"] + r["E-step CPU [s]"]) / (
            base["set-up CPU [s]"] + base["E-step CPU [s]"]
        )
    markdown = "\n".join(
        [
            f"# The preconditioner's rank on `{args.folder}`",
            "",
            f"One cold E-step of the library's defaults at α = {alpha:.4g} (the committed "
            "`sampled-default` row's), 8 samples, `em_rtol` 1e-3, block CG, Φ held, one thread. "
            "`rank`: where the sketch ended; `auto` starts at 100 and doubles while `1 + λ_r` (its "
            "smallest eigenvalue against the prior, whitened at this α) exceeds "
            f"`(r / {RANK_SCALE})²`. The set-up "
            "(Φ, the noise pass and the sketch) is paid once per fit, the E-step's cost once per "
            "EM step and, with 32 samples, once more for the final samples. Made by "
            "`benchmarks/preconditioner_rank.py`.",
            "",
            markdown_table(rows, list(rows[0])),
        ]
    )
    write(f"preconditioner_rank-{name}", {"alpha": alpha, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
