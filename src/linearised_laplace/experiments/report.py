"""Tables and figures of a classification benchmark: Table 1, Figures 5 and 6, reliability diagram."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .catalogue import ALL_METHODS, OUR_METHODS  # noqa: E402
from .explanation import LEGEND, summary  # noqa: E402

SUMMARY = [
    "accuracy", "confidence", "logit variance", "NLL", "ECE", "Brier", "OOD AUROC", "fit [s]",
    "fit CPU [s]", "peak memory [MB]",
]  # fmt: skip


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(rows: list[list], header: list[str]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


PROTOCOL = (
    "Joint LL κ (κ-adic): the test set, shuffled 10 times, is split into disjoint sets of κ "
    "points, each re-sampled to τ = 10(κ − 1) labels (every point at least once, the same counts "
    "for every sample) and scored by its joint log-likelihood; the entry is the mean over sets, "
    "not divided by τ, so a deterministic predictor scores 10(κ − 1) × its marginal LL (κ = 1 is "
    "the marginal LL)."
)


def write_report(report: dict, out: Path) -> None:
    """``results.md`` and ``figure5.png``, ``figure6.png``, ``reliability.png`` in ``out``."""
    done = [r for r in report["results"] if "error" not in r]
    failed = [r for r in report["results"] if "error" in r]
    names = [r["method"] for r in done]
    s = report["settings"]
    sentences = summary(done)
    lines = [
        f"# {s['dataset']} / {s['model']}: marginal and joint log-likelihoods",
        "",
        f"{s['n_samples']} posterior samples per predictive; EM for {s['em_steps']} steps; "
        f"seed {s['seed']}. {PROTOCOL} Dyadic: the neural testbed's pairs with 10 labels.",
        "",
        *(["## What this run shows", "", " ".join(sentences), ""] if sentences else []),
        "Columns of the summary (on the test set):",
        "",
        *(f"- **{name}** ({better} is better): {text}." for name, better, text in LEGEND),
        "",
        "## Table 1 layout (higher is better)",
        "",
        table(
            [[f"κ = {k}"] + [r[f"joint LL κ={k}"] for r in done] for k in range(1, 6)]
            + [["dyadic κ = 10"] + [r["dyadic LL κ=10"] for r in done]],
            ["", *names],
        ),
        "",
        "## Summary",
        "",
        table(
            [[r["method"]] + [r.get(k, "") for k in SUMMARY] + [em_outcome(r)] for r in done],
            ["method", *SUMMARY, "EM"],
        ),
        "",
        "## Rotated test sets (Figure 5): NLL",
        "",
    ]
    angles = list(done[0]["rotated"]) if done else []
    lines.append(
        table([[a] + [r["rotated"][a]["NLL"] for r in done] for a in angles], ["angle", *names])
    )
    lines += fidelity(done)
    if report.get("skipped"):
        lines += ["", f"Skipped (laplace-torch not installed): {', '.join(report['skipped'])}."]
    for r in failed:
        lines += ["", f"`{r['method']}` did not run: {r['error']}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if done:  # 20 colours: a benchmark compares more than the default cycle's 10 methods
        with plt.rc_context({"axes.prop_cycle": plt.cycler(color=plt.cm.tab20.colors)}):
            _figure5(done, out / "figure5.png")
            _figure6(done, out / "figure6.png")
            _reliability(done, out / "reliability.png")


FIDELITY = ("logit variance", "NLL", *(f"joint LL κ={k}" for k in range(1, 6)), "ECE")
PAIRS = tuple(
    (m, "exact" + m.removeprefix("sampled")) for m in OUR_METHODS if m.startswith("sampled")
)


def _with_alpha(row: dict) -> dict:
    """``row`` with EM's prior precision as ``"α (EM)"``, where it has one."""
    return {**row, "α (EM)": row["prior_precision"][0]} if "prior_precision" in row else row


def em_outcome(row: dict) -> str:
    """How a row's EM ended, as its recorded history says.

    ``converged in N steps``, ``not converged after N steps`` (its α and scores are then the last
    step's), or ``""`` for a row without EM.
    """
    if not row.get("em_history"):
        return ""
    return (
        f"{'not converged after' if em_unconverged(row) else 'converged in'} {em_steps(row)} steps"
    )


def em_steps(row: dict) -> int:
    """How many EM steps a row's recorded history holds (its start, step 0, not counted)."""
    history = row.get("em_history") or []
    return len(history) - 1 if history and history[0].get("step") == 0 else len(history)


def em_unconverged(row: dict) -> bool:
    """Whether a row ran EM and its last step had not converged."""
    history = row.get("em_history")
    return bool(history) and not history[-1].get("converged")


UNCONVERGED = (
    "† EM did not converge: α and the scores are those of its last step, not of a fixed point."
)


def fidelity(done: list[dict], level: int = 2) -> list[str]:
    """Sampled against exact LLA on the same network: EM's ``α`` and the scores, side by side.

    Both fit the same linear model from the same noise seed, so they differ by the solvers' errors
    (samples and mean) and the sampled γ estimate only; a table for each pair present, under
    headings of markdown ``level``.
    """
    return _fidelity_tables({None: done}, level)


def seed_fidelity(reports: list[dict], level: int = 2) -> list[str]:
    """:func:`fidelity` as mean ± standard error over the MAP seeds on which both rows of a pair ran.

    The relative difference is taken per seed, then averaged.
    """
    runs = {
        r["settings"]["seed"]: [row for row in r["results"] if "error" not in row] for r in reports
    }
    return _fidelity_tables(runs, level)


def _fidelity_tables(runs: dict, level: int) -> list[str]:
    """Fidelity tables over ``runs`` (seed, or ``None`` for one unnamed run, to its done rows)."""
    lines = []
    for sampled, exact in PAIRS:
        pairs = {}
        for seed, done in runs.items():
            by_name = {r["method"]: _with_alpha(r) for r in done}
            if sampled in by_name and exact in by_name:
                pairs[seed] = (by_name[sampled], by_name[exact])
        if not pairs:
            continue
        keys = [
            k for k in ("α (EM)", *FIDELITY) if all(k in a and k in b for a, b in pairs.values())
        ]
        rows = [
            [
                k,
                mean_and_error([a[k] for a, _ in pairs.values()]),
                mean_and_error([b[k] for _, b in pairs.values()]),
                mean_and_error([a[k] / b[k] - 1 for a, b in pairs.values()]),
            ]
            for k in keys
        ]
        seeds = "" if None in pairs else f", MAP seeds {sorted(pairs)}"
        lines += [
            "",
            f"{'#' * level} Fidelity: `{sampled}` against `{exact}` on the same network{seeds}",
            "",
            table(rows, ["", sampled, exact, "relative difference"]),
        ]
    return lines


def mean_and_error(values: list[float]) -> str:
    """``mean ± standard error`` of per-seed values (just the value for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return _cell(mean)
    se = (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5
    return f"{mean:.4g} ± {se:.2g}"


def seed_reports(out: Path) -> list[dict]:
    """The reports in ``out/seed-<seed>/results.json``, in seed order."""
    paths = sorted(out.glob("seed-*/results.json"), key=lambda p: int(p.parent.name[5:]))
    return [json.loads(p.read_text()) for p in paths]


# recorded settings a seed's run may change without changing what its Table 1 rows measure
PER_SEED = ("seed", "angles")


def check_same_settings(reports: list[dict]) -> None:
    """Raise ``ValueError`` unless ``reports`` differ only in :data:`PER_SEED` settings."""
    first = {k: v for k, v in reports[0]["settings"].items() if k not in PER_SEED}
    for report in reports[1:]:
        other = {k: v for k, v in report["settings"].items() if k not in PER_SEED}
        if other != first:
            keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(
                f"seed {report['settings']['seed']} ran with other settings than seed "
                f"{reports[0]['settings']['seed']} ({', '.join(keys)} differ); a mean over seeds "
                "needs one set-up: give each set-up its own --out folder"
            )


def seed_tables(reports: list[dict], reference: str | None = None, level: int = 2) -> list[str]:
    """Table 1 and the summary as mean ± standard error over seeds, as markdown lines.

    ``reports``: one :func:`write_report` report per MAP seed. Methods scored on every seed are
    tabled, ours then the peers (sampled rows next to their exact twins); the others are named with
    their seeds. Where ``reference`` ran on every seed, a table gives its paired differences from
    each method (mean ± standard error over seeds of ``reference − method``; positive:
    ``reference`` is better), which removes the spread between MAPs that the per-method errors
    include; ``None``: the first sampled LLA row of
    :data:`OUR_METHODS` that ran on every seed. ``level``: the headings' markdown level.
    """
    check_same_settings(reports)
    heading = "#" * level
    by_method, ran_on = {}, {}
    for report in reports:
        for r in report["results"]:
            if "error" not in r:
                by_method.setdefault(r["method"], []).append(_with_alpha(r))
                ran_on.setdefault(r["method"], []).append(str(report["settings"]["seed"]))
    ordered = sorted(
        by_method, key=lambda m: ALL_METHODS.index(m) if m in ALL_METHODS else len(ALL_METHODS)
    )
    names = [m for m in ordered if len(by_method[m]) == len(reports)]
    partial = [m for m in ordered if m not in names]
    if reference is None:
        reference = next((m for m in OUR_METHODS if m.startswith("sampled") and m in names), None)

    def cell(method: str, key: str) -> str:  # blank unless every seed recorded it
        values = [r.get(key) for r in by_method[method]]
        return "" if None in values else mean_and_error(values)

    unconverged = {}  # method: the seeds on which its EM did not converge
    for m, rows in by_method.items():
        for seed, row in zip(ran_on[m], rows, strict=True):
            if em_unconverged(row):
                unconverged.setdefault(m, []).append(seed)
    unconverged_seeds = "; ".join(
        f"`{m}` {', '.join(seeds)}" for m, seeds in unconverged.items() if m in names
    )
    kappas = [
        k for k in range(1, 6) if all(f"joint LL κ={k}" in r for m in names for r in by_method[m])
    ]
    keys = [k for k in ("α (EM)", *SUMMARY) if any(k in r for m in names for r in by_method[m])]
    lines = [
        f"{heading} Table 1 layout (higher is better)",
        "",
        table(
            [[f"κ = {k}", *(cell(m, f"joint LL κ={k}") for m in names)] for k in kappas],
            ["", *(f"{m} †" if m in unconverged else m for m in names)],
        ),
    ]
    if any(m in unconverged for m in names):
        lines += ["", f"{UNCONVERGED} Seeds: {unconverged_seeds}."]
    others = [m for m in names if m != reference]
    if reference in names and others:

        def difference(method: str, key: str) -> str:
            pairs = zip(by_method[reference], by_method[method], strict=True)
            return mean_and_error([a[key] - b[key] for a, b in pairs])

        lines += [
            "",
            f"{heading} `{reference}` minus each method, paired by seed "
            f"(positive: `{reference}` is better)",
            "",
            table(
                [[f"κ = {k}", *(difference(m, f"joint LL κ={k}") for m in others)] for k in kappas],
                ["", *others],
            ),
        ]
    lines += [
        "",
        f"{heading} Summary",
        "",
        table([[m, *(cell(m, k) for k in keys)] for m in names], ["method", *keys]),
    ]
    if partial:
        lines += [
            "",
            "Not on every seed: "
            + "; ".join(f"`{m}` (seed {', '.join(ran_on[m])})" for m in partial)
            + ".",
        ]
    return lines


def kept_notes(page: Path) -> list[str]:
    """The hand-written ``## Notes`` section of an existing ``page`` onwards (none: ``[]``)."""
    text = page.read_text() if page.exists() else ""
    start = text.find("\n## Notes")
    return ["", text[start + 1 :].rstrip()] if start >= 0 else []


def write_seed_report(reports: list[dict], out: Path, reference: str | None = None) -> None:
    """``results.md`` in ``out``: :func:`seed_tables` and :func:`seed_fidelity` over ``reports``.

    A ``## Notes`` section already in ``out/results.md`` is kept, after the new tables.
    """
    s = reports[0]["settings"]
    lines = [
        f"# {s['dataset']} / {s['model']}: mean ± standard error over MAP seeds "
        f"{[r['settings']['seed'] for r in reports]}",
        "",
        "Each seed trains its own MAP (and draws its own data subset and samples); its full report "
        "is in `seed-<seed>/results.md`. Methods that did not run on every seed are named below.",
        "",
        *seed_tables(reports, reference),
        *seed_fidelity(reports),
        *kept_notes(out / "results.md"),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _figure5(done: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in done:
        angles = [float(a) for a in r["rotated"]]
        axes[0].plot(
            angles, [-v["NLL"] for v in r["rotated"].values()], marker=".", label=r["method"]
        )
        axes[1].plot(
            angles,
            [v["joint LL κ=5"] for v in r["rotated"].values()],
            marker=".",
            label=r["method"],
        )
    for ax, title in zip(axes, ("marginal LL", "κ-adic joint LL (κ = 5)"), strict=True):
        ax.set(xlabel="rotation [degrees]", ylabel=title, title=title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Performance under distribution shift (Figure 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure6(done: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in done:
        if "em_history" in r:
            alphas = [
                sum(h["prior_precision"]) / len(h["prior_precision"]) for h in r["em_history"]
            ]
            ax.semilogy(range(len(alphas)), alphas, marker="o", label=r["method"])
    ax.set(
        xlabel="EM step",
        ylabel="prior precision α",
        title="Prior precision trajectories (Figure 6)",
    )
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no method with EM was run", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reliability(done: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="calibrated")
    for r in done:
        bins = r["reliability"]
        points = [
            (c, a)
            for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
            if n > 0
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=r["method"])
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
