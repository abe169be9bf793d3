"""The seed paper's Table 1 on the Fashion-MNIST CNN, in both MAP regimes, on one page.

Reads the classification benchmark's seed folders for a calibrated MAP
(``results/fashion-mnist-cnn/calibrated``: 20 epochs, weight decay 1e-4) and an overconfident one
(``results/fashion-mnist-cnn-overconfident``: 100 epochs, no weight decay). Writes
``results/fashion-mnist-cnn/results.md``: per regime, Table 1 (κ = 1…5, κ-adic) as mean ± standard
error over MAP seeds, sampled LLA's paired differences from every method (the library's
defaults, ``sampled-default``, where every seed has them), the summary, and the
sampled-against-exact fidelity tables over the seeds with both rows.
The page's ``## Notes`` are kept. Run after the benchmarks: ``python benchmarks/table1.py``.
"""

from __future__ import annotations

import os

from _report import RESULTS

from linearised_laplace.experiments.report import (
    PROTOCOL,
    kept_notes,
    seed_fidelity,
    seed_reports,
    seed_tables,
)

PAGE = RESULTS / "fashion-mnist-cnn" / "results.md"
# title, seed folders, the sampled rows paired with every other row: the first on every seed
REGIMES = (
    (
        "Calibrated MAP (20 epochs, weight decay 1e-4)",
        PAGE.parent / "calibrated",
        ("sampled-default", "sampled"),
    ),
    (
        "Overconfident MAP (100 epochs, no weight decay)",
        RESULTS / "fashion-mnist-cnn-overconfident",
        ("sampled-default", "sampled-isotropic"),
    ),
)


def main() -> None:
    lines = [
        "# Fashion-MNIST CNN: the seed paper's Table 1 in two MAP regimes",
        "",
        f"{PROTOCOL} Each seed trains its own MAP and draws its own 10,000 training points and "
        "samples; mean ± standard error over the seeds.",
    ]
    for title, folder, candidates in REGIMES:
        reports = seed_reports(folder)
        on_every_seed = [m for m in candidates if all(_ran(r, m) for r in reports)]
        reference = on_every_seed[0] if on_every_seed else candidates[-1]
        where = os.path.relpath(folder, PAGE.parent)
        lines += [
            "",
            f"## {title}, MAP seeds {[r['settings']['seed'] for r in reports]}",
            "",
            f"Per-seed reports, rotated test sets and figures: `{where}/seed-<seed>/`.",
            "",
            *seed_tables(reports, reference, level=3),
            "",
            "Each fidelity pair fits the same linear model from the same noise seed (EM's α, then "
            "the scores).",
            *seed_fidelity(reports, level=3),
        ]
    lines += kept_notes(PAGE)
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"wrote {PAGE}")


def _ran(report: dict, method: str) -> bool:
    return any(r["method"] == method and "error" not in r for r in report["results"])


if __name__ == "__main__":
    main()
