"""The README's figures: each one's results file and the function that reads it.

:data:`FIGURES` maps a figure's name to its source, a results file under ``benchmarks/results/``
(without ``.json``) or a folder of ``seed-*`` reports, and a function of that source that returns
the figure's text. Where the wording depends on a number's sign or order, the function writes the
words too. ``benchmarks/readme.py`` puts them into the documents.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path

from linearised_laplace.experiments.report import em_outcome, seed_reports

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- reading and formatting
@functools.cache
def load(source: str, results: Path = RESULTS):
    """A results file's JSON (``source`` without ``.json``), or a seed folder's reports."""
    path = results / f"{source}.json"
    if path.exists():
        return json.loads(path.read_text())
    if (results / source).is_dir():
        return seed_reports(results / source)
    raise FileNotFoundError(f"no results file {path} nor seed folder {results / source}")


def row(rows: list[dict], **match) -> dict:
    """The one row of ``rows`` whose fields equal ``match``."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise LookupError(f"{len(found)} rows match {match}")
    return found[0]


def value(key: str, digits: int = 3, table: str = "rows", **match) -> Callable:
    """A figure: ``key`` of the one row of ``data[table]`` matching ``match``, to ``digits``."""
    return lambda data: sig(row(data[table], **match)[key], digits)


def joined(template: str, *figures: Callable) -> Callable:
    """A figure: ``template`` filled with ``figures`` in order."""
    return lambda data: template.format(*(figure(data) for figure in figures))


def tomography_lls(method: str, marginal_digits: int = 3) -> Callable:
    """A figure: ``method``'s marginal and 10×10-patch log-likelihoods, ``marginal / patch``."""
    return joined(
        "{} / {}",
        value("marginal LL", marginal_digits, "results", method=method),
        value("patch LL (10×10)", 3, "results", method=method),
    )


def pct(x: float, digits: int = 2, sign: bool = False) -> str:
    """``x`` as a percentage to ``digits`` significant digits, at most 3 decimals, minus as ``−``."""
    value = 100 * x
    if abs(value) < 5e-4:
        return "< 0.001 %"
    decimals = min(3, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    text = f"{value:+,.{decimals}f} %" if sign else f"{value:,.{decimals}f} %"
    return text.replace("-", "−")


def sig(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, with thousands separators, minus as ``−``."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{round(x, decimals):,.{decimals}f}".replace("-", "−")


def times(x: float) -> str:
    return f"{sig(x, 2)}×"


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    """``fmt(min)–fmt(max)``, or one value where they agree."""
    low, high = fmt(min(values)), fmt(max(values))
    if low == high:
        return low
    return f"{low} to {high}" if min(values) < 0 else f"{low}–{high}"


def paired(reports: list[dict], reference: str, other: str, key: str) -> str:
    """``mean ± se`` over seeds of ``reference − other`` in ``key``, with the sign."""
    diffs = []
    for report in reports:
        rows = {r["method"]: r for r in report["results"] if "error" not in r}
        if reference in rows and other in rows:
            diffs.append(rows[reference][key] - rows[other][key])
    mean = statistics.fmean(diffs)
    if len(diffs) == 1:
        return f"{mean:+.2f} (one seed)".replace("-", "−")
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{mean:+.2f} ± {se:.2f}".replace("-", "−")


def paired_wins(reports: list[dict], reference: str, others: tuple[str, ...], kappas) -> str:
    """``reference − other`` at each κ over the seeds with ``reference``, and how many it wins."""
    seeds = [r for r in reports if any(x["method"] == reference for x in r["results"])]
    if not seeds:
        return f"`{reference}` has not run"
    wins, parts = 0, []
    for kappa in kappas:
        key, cells = f"joint LL κ={kappa}", []
        for other in others:
            cells.append(f"{PEER_NAMES.get(other, other)} {paired(seeds, reference, other, key)}")
            diffs = [
                row(r["results"], method=reference)[key] - row(r["results"], method=other)[key]
                for r in seeds
            ]
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
            wins += statistics.fmean(diffs) > 2 * se
        parts.append(f"κ = {kappa}: " + ", ".join(cells))
    seed_ids = [r["settings"]["seed"] for r in seeds]
    return (
        f"MAP seeds {seed_ids}; " + "; ".join(parts) + f"; ahead by more than two standard errors "
        f"in {wins} of {len(kappas) * len(others)}"
    )


def across_seeds(reports: list[dict], method: str, key: str, fmt=lambda x: f"{x:.3f}") -> str:
    """``mean ± se`` over seeds of one method's ``key``."""
    values = [row(r["results"], method=method)[key] for r in reports]
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{fmt(statistics.fmean(values))} ± {fmt(se)}"


# ---------------------------------------------------------------- the solver-fidelity figures
def solver_rows(*sources: str) -> list[dict]:
    return [r for source in sources for r in load(source)["rows"]]


def solver_cell(r: dict) -> str:
    verdict = "" if r["pass"] else (" ✗ (warned)" if r["warned"] else " ✗ (silent)")
    return (
        f"{pct(r['err_same_noise'], sign=True)} (r {r['corr']:.3f}); "
        f"{pct(r['err'], sign=True)} ± {pct(r['mc'])}; {seconds(r)}{verdict}"
    )


def seconds(r: dict) -> str:
    """Wall seconds, and CPU seconds where the row recorded them."""
    cpu = r.get("CPU seconds")
    return f"{sig(r['seconds'], 2)} s" + ("" if cpu is None else f" (CPU {sig(cpu, 2)} s)")


def solver_table(_) -> str:
    rows = solver_rows("solver_fidelity", "solver_fidelity-fashion")
    lines = [
        "| problem | D | `auto` ran | default | SGD() | CG() |",
        "|---|---|---|---|---|---|",
    ]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = {r["solver"]: r for r in rows if r["problem"] == problem}
        mark = " ¹" if "fashion" in problem else ""
        cells = [solver_cell(mine[s]) for s in ("default", "SGD", "CG")]
        lines.append(
            f"| {problem}{mark} | {mine['default']['D']:,} | {mine['default']['ran']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def point_fidelity(data) -> str:
    """Per point, ``auto``'s variance against exact samples, the closed form and the MC floor."""
    parts = [
        f"{r['problem']} {pct(r['point_err_same_noise'], 2)}, {pct(r['point_err'], 2)} "
        f"(floor {pct(r['point_mc'], 2)})"
        for r in data["rows"]
        if r["solver"] == "default" and "point_err" in r
    ]
    return "; ".join(parts)


def auto_counts(_) -> str:
    rows = solver_rows("solver_fidelity", "solver_fidelity-fashion")
    defaults = [r for r in rows if r["solver"] == "default"]
    cholesky = sum(r["ran"].startswith("cholesky") for r in defaults)
    return f"{cholesky} of the {len(defaults)}"


def iterative_defaults(_) -> str:
    rows = solver_rows("solver_fidelity", "solver_fidelity-fashion")
    names = [r["problem"] for r in rows if r["solver"] == "default" and "cholesky" not in r["ran"]]
    return ", ".join(names) or "none"


def cpu(r: dict) -> float:
    """A row's CPU seconds where recorded (what a shared machine cannot inflate), else wall."""
    return r.get("CPU seconds") or r["seconds"]


def solver_cpu(problem: str, solver: str = "default") -> Callable:
    return lambda data: sig(cpu(row(data["rows"], problem=problem, solver=solver)), 2)


def cholesky_against_cg(_) -> str:
    """Where Cholesky, as ``auto`` ran it, took more CPU time than CG on the same problem."""
    rows = solver_rows("solver_fidelity")
    slower = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        default = row(rows, problem=problem, solver="default")
        cg = row(rows, problem=problem, solver="CG")
        if default["ran"].startswith("cholesky") and cpu(default) > cpu(cg):
            slower.append(f"{problem} ({sig(cpu(default), 2)} s against {sig(cpu(cg), 2)} s)")
    if not slower:
        return "; never slower than CG here"
    return "; more CPU time than CG on " + ", ".join(slower)


def cg_iterations(_) -> str:
    rows = [
        r for r in solver_rows("solver_fidelity", "solver_fidelity-fashion") if "cg (" in r["ran"]
    ]
    return span([r["steps"] for r in rows], lambda x: f"{x:,}")


def cg_worst_error(_) -> str:
    rows = [
        r for r in solver_rows("solver_fidelity", "solver_fidelity-fashion") if r["solver"] == "CG"
    ]
    worst = max(rows, key=lambda r: abs(r["err_same_noise"]))
    return f"{pct(abs(worst['err_same_noise']))} ({worst['problem']})"


def sgd_summary(_) -> str:
    rows = [
        r for r in solver_rows("solver_fidelity", "solver_fidelity-fashion") if r["solver"] == "SGD"
    ]
    good = [r for r in rows if r["pass"]]
    bad = [r for r in rows if not r["pass"]]
    text = f"within {pct(max(abs(r['err_same_noise']) for r in good))} of exact samples on {len(good)} of the {len(rows)} problems"
    if bad:
        text += "; it fails on " + ", ".join(
            f"{r['problem']} ({times(1 + r['err_same_noise'])} exact, {'warned' if r['warned'] else 'silent'})"
            for r in bad
        )
    return text


def jacobi_summary(_) -> str:
    rows = [
        r
        for r in solver_rows("solver_fidelity", "solver_fidelity-fashion")
        if r["solver"] == "SGD-jacobi"
    ]
    failed = [r for r in rows if not r["pass"]]
    silent = [r["problem"] for r in failed if not r["warned"]]
    text = (
        f"it fails on {len(failed)} of {len(rows)} problems, where its variance is "
        f"{span([1 + r['err_same_noise'] for r in failed], times)} that of exact samples"
    )
    passed = [r["problem"] for r in rows if r["pass"]]
    if passed:
        text += f"; it passes on {', '.join(passed)}"
    return text + (
        f"; it fails silently on {', '.join(silent)}" if silent else "; it warns wherever it fails"
    )


def sdd_errors(_) -> str:
    rows = load("solver_fidelity-sdd")["rows"]
    return ", ".join(f"{times(1 + r['err_same_noise'])} ({r['problem']})" for r in rows)


def sdd_budgets(_) -> str:
    rows = load("solver_fidelity-sdd")["rows"]
    budgets = [r["budget_to_10pct"] for r in rows]
    return ", ".join(
        f"{r['problem']}: " + ("more than 2,000" if b is None else f"{b:,}")
        for r, b in zip(rows, budgets, strict=True)
    )


def fashion_row(solver: str) -> dict:
    return row(load("solver_fidelity-fashion")["rows"], solver=solver)


def error_estimate_separation(_) -> str:
    """How well SGD's error estimate, and the Euclidean residual, tell good samples from bad ones."""
    rows = [
        r
        for r in solver_rows("solver_fidelity", "solver_fidelity-fashion")
        if r["worst_error_estimate"] is not None
    ]
    good = [r for r in rows if r["pass"]]
    bad = [r for r in rows if not r["pass"]]
    worst_good = max(good, key=lambda r: r["worst_residual"])
    best_bad = min(bad, key=lambda r: r["worst_residual"])
    est_good = max(r["worst_error_estimate"] for r in good)
    est_bad = min(r["worst_error_estimate"] for r in bad)
    verdict = "so it separates them" if est_good < est_bad else "so it does not separate them fully"
    return (
        f"{sig(worst_good['worst_residual'], 2)} for samples {pct(abs(worst_good['err_same_noise']))} "
        f"off exact, {sig(best_bad['worst_residual'], 2)} for samples "
        f"{pct(abs(best_bad['err_same_noise']))} off); the error estimate was at most "
        f"{sig(est_good, 2)} for every SGD run that passes and at least {sig(est_bad, 2)} for every "
        f"one that fails, {verdict}"
    )


# ---------------------------------------------------------------- the other benchmarks
def sampler(problem: str, objective: str, key: str = "weight-space rel. error") -> Callable:
    def figure(data) -> str:
        rows = [r for r in data["rows"] if r["problem"].startswith(problem)]
        return pct(row(rows, objective=objective)[key])

    return figure


def em_gap(data) -> str:
    gaps = [
        row(data["rows"], prior=p, method="SampledLaplace")["final α"]
        / row(data["rows"], prior=p, method="ExactLaplace")["final α"]
        - 1
        for p in ("isotropic", "g-prior")
    ]
    return pct(max(abs(g) for g in gaps))


def sibling_range(methods: list[str], key: str) -> Callable:
    return lambda data: span(
        [row(data["rows"], method=m)[key] for m in methods], lambda x: sig(x, 2)
    )


def resnet18(key: str, fmt=times) -> Callable:
    return lambda data: fmt(data["rows"][0][key])


def r18_uncertainty(data) -> str:
    """The sampler epoch's uncertainty from the spread of the fits' repeats, relative to it."""
    r = data["rows"][0]
    uncertainty = r["sampler epoch per sample CPU uncertainty [s]"]
    return f"±{pct(uncertainty / r['sampler epoch per sample CPU [s]'], 2)}"


def tomo_ratio(data) -> str:
    rows = data["results"]
    return sig(
        row(rows, method="exact")["wall-clock [min]"]
        / row(rows, method="sampled-dual")["wall-clock [min]"],
        2,
    )


def full_laplace_bound(data) -> str:
    """The speed-up over laplace-torch's full Laplace at d = 20k, where all of its backends timed out."""
    sampled = row(data["rows"], d="20k", method="sampled")["seconds"]
    limit = 300
    return f"≥ {math.floor(limit / sampled)}× ({limit} s / {sig(sampled, 3)} s)"


def data_memory(data) -> str:
    return " → ".join(sig(r["method memory [MB]"], 3) for r in data["rows"])


def batching(network: str, ks: tuple[int, ...]) -> Callable:
    def figure(data) -> str:
        rows = [r for r in data["rows"] if r["network"].startswith(network) and r["K"] in ks]
        return span([1 / r["vmap / loop"] for r in rows], lambda x: sig(x, 2))

    return figure


def seed_paired(reference: str, other: str, kappa: int = 5) -> Callable:
    return lambda reports: paired(reports, reference, other, f"joint LL κ={kappa}")


def seed_value(method: str, key: str, fmt=lambda x: f"{x:.3f}") -> Callable:
    return lambda reports: across_seeds(reports, method, key, fmt)


def alpha_gap(sampled: str, exact: str) -> Callable:
    def figure(reports) -> str:
        gaps = []
        for report in reports:
            rows = {r["method"]: r for r in report["results"] if "error" not in r}
            if sampled in rows and exact in rows:
                gaps.append(
                    rows[sampled]["prior_precision"][0] / rows[exact]["prior_precision"][0] - 1
                )
        se = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
        text = pct(statistics.fmean(gaps), 2, sign=True)
        return text if math.isnan(se) else f"{text[:-2]} ± {pct(se)}"

    return figure


def em_convergence(methods: tuple[str, ...]) -> Callable:
    """How many of the seeds' EM runs of ``methods`` ended converged."""

    def figure(reports) -> str:
        flags = [
            r["em_history"][-1].get("converged", False)
            for report in reports
            for r in report["results"]
            if r["method"] in methods and r.get("em_history")
        ]
        if not flags:
            return "no EM run yet"
        if all(flags):
            return f"EM converged in all {len(flags)} of these runs"
        return (
            f"EM converged in {sum(flags)} of these {len(flags)} runs, so the α compared are "
            "mostly last iterates, not fixed points"
        )

    return figure


def default_wins(reports: list[dict]) -> str:
    """The library's defaults against the paper's peers at κ = 3, 4, 5 (:func:`paired_wins`)."""
    peers = ("lt-kron-marglik", "lt-lastlayer-marglik", "ensemble")
    return paired_wins(reports, "sampled-default", peers, (3, 4, 5))


def em_runs(method: str) -> Callable:
    """Per seed: how ``method``'s EM ended, its α, and the CPU seconds of EM and the final samples.

    With the commit each ran at, as seeds rerun after a change to EM differ in their steps.
    """

    def figure(reports) -> str:
        parts = []
        for report in reports:
            r = next((x for x in report["results"] if x["method"] == method), None)
            if r is None:
                continue
            cpu = {stage: cost["cpu_seconds"] for stage, cost in r["em costs"].items()}
            parts.append(
                f"seed {report['settings']['seed']}: {em_outcome(r)}, α {sig(r['prior_precision'][0])}"
                f", EM {cpu['EM']:,.0f} and final samples {cpu['final samples']:,.0f} CPU s "
                f"(commit {r['provenance']['commit'][:7]})"
            )
        return "; ".join(parts) if parts else f"`{method}` has not run"

    return figure


def em_rtol(data) -> str:
    """The solver's bias of γ̂ and CG's steps by ``em_rtol``, against 8 samples' spread."""
    by = {r["em_rtol"]: r for r in data["summary"]}

    def at(rtol: float) -> str:
        r = by[rtol]
        return f"{pct(r['mean bias'], sign=True, digits=2)} at {rtol:g} ({sig(r['mean CG steps'], 2)} CG steps)"

    tight = min(by)
    return (
        f"against {tight:g} ({sig(by[tight]['mean CG steps'], 2)} CG steps), γ̂ moves by "
        f"{at(1e-3)} and {at(1e-2)}, while 8 samples' γ̂ spread by {pct(data['spread'], digits=2)}"
    )


def auto_rank(_) -> str:
    """Where the ``"auto"`` sketch stopped on each Table 1 CNN, and its E-step against rank 100's."""
    parts = []
    for regime in ("calibrated", "overconfident"):
        folder = "fashion-mnist-cnn-calibrated" if regime == "calibrated" else OVER
        rows = load(f"preconditioner_rank-{folder.replace('/', '-')}-seed-0")["rows"]
        auto, base = row(rows, preconditioner_rank="auto"), row(rows, preconditioner_rank=100)
        parts.append(
            f"{regime}: rank {auto['rank']}, one E-step {auto['CG steps']} CG iterations and "
            f"{sig(auto['E-step CPU [s]'])} CPU s against rank 100's {base['CG steps']} and "
            f"{sig(base['E-step CPU [s]'])} s, the sketch {sig(auto['set-up CPU [s]'] - base['set-up CPU [s]'])} "
            "CPU s more"
        )
    return "; ".join(parts)


def block_cg(k: int) -> Callable:
    """A figure: block CG's iterations and solve seconds against per-sample CG's at ``K = k``."""

    def figure(data) -> str:
        pairs = {}
        for r in data["rows"]:
            if r["K"] == k:
                pairs.setdefault(r["problem"], {})[r["solver"]] = r
        ratios = [p["block CG"]["steps"] / p["CG"]["steps"] for p in pairs.values()]
        times = [p["block CG"]["solve [s]"] / p["CG"]["solve [s]"] for p in pairs.values()]
        worst = max(abs(p["block CG"]["point"]) for p in pairs.values())
        if len(pairs) == 1:
            p = next(iter(pairs.values()))
            return (
                f"{p['block CG']['steps']} block CG iterations against {p['CG']['steps']}, "
                f"{sig(p['block CG']['solve [s]'], 2)} s against {sig(p['CG']['solve [s]'], 2)} s; "
                f"the variances differ by {pct(worst, digits=2)} per point"
            )
        return (
            f"{sig(min(ratios), 2)}–{sig(max(ratios), 2)}× the iterations (median "
            f"{sig(statistics.median(ratios), 2)}×) and {sig(min(times), 2)}–{sig(max(times), 2)}× "
            f"the solve time of per-sample CG on the {len(pairs)} problems; the variances "
            f"differ by at most {pct(worst, digits=2)} per point"
        )

    return figure


def preconditioner_summary(data) -> str:
    """CG's iterations to tolerance with KFAC against Nyström per problem, and the count of wins."""
    steps: dict[str, dict[str, dict]] = {}
    for r in data["rows"]:
        steps.setdefault(r["problem"], {})[r["solver"]] = r

    def count(r: dict) -> str:
        return f"{r['steps']:,}" + ("" if r["converged"] else " (not converged)")

    parts = [
        f"{p} {count(s['CG-kfac'])} against {count(s['CG-nystrom'])}" for p, s in steps.items()
    ]
    fewer = sum(s["CG-kfac"]["steps"] < s["CG-nystrom"]["steps"] for s in steps.values())
    return (
        f"KFAC against Nyström, CG iterations: {', '.join(parts)}; KFAC needed fewer "
        f"on {fewer} of {len(steps)} problems"
    )


def sgd_kfac_misses(data) -> str:
    """Where SGD with KFAC ended off exact samples by more than 5 % without a warning."""
    missed = [
        f"{r['problem']} ({pct(r['err_same_noise'], 2)})"
        for r in data["rows"]
        if r["solver"] == "SGD-kfac" and abs(r["err_same_noise"] or 0) > 0.05 and not r["warned"]
    ]
    return ", ".join(missed) if missed else "none"


def mean_solve_summary(data) -> str:
    """Per family, the mean solve's CG iterations with the new preconditioner against Jacobi."""
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for r in data["rows"]:
        runs.setdefault((r["family"], r["problem"]), {})[r["preconditioner"]] = r
    parts = []
    for family, new in (("exact", "cholesky"), ("sampled", "posterior")):
        pairs = [
            f"{problem} {rows[new]['CG iterations']:,} against {rows['jacobi']['CG iterations']:,}"
            for (fam, problem), rows in runs.items()
            if fam == family and new in rows
        ]
        cpu = [
            rows["jacobi"]["CPU seconds"] / rows[new]["CPU seconds"]
            for (fam, _), rows in runs.items()
            if fam == family and new in rows
        ]
        label = "H's Cholesky factor" if family == "exact" else "A + M_r"
        parts.append(
            f"{family} family, {label}: {', '.join(pairs)} "
            f"(CPU time {sig(min(cpu), 2)}×–{sig(max(cpu), 2)}× less)"
        )
    return "; ".join(parts)


CNN = "fashion-mnist-cnn/calibrated"
OVER = "fashion-mnist-cnn-overconfident"
RESNET = "fashion-mnist-resnet/seed-0/results"


# name: (source, figure); sources are relative to benchmarks/results, without ".json"
def regression_rules(data) -> str:
    """Per rule: how often it had the best test NLL, its mean gap to the best, failures."""
    parts = []
    for r in data["summary"]:
        failed = f", failed on {r['failed']}" if r["failed"] else ""
        parts.append(
            f"{r['rule']} best on {r['best on']}, {sig(r['mean NLL − best'], 2)} nats behind the "
            f"best on average, {sig(r['mean CPU [s]'], 2)} CPU s{failed}"
        )
    return "; ".join(parts)


AUTO_START = "SampledLaplace (start='auto')"


def default_workflow(data) -> str:
    """The sampled default's CPU against its MAP's training and the exact default, from one run."""
    by = {r["family"]: r for r in data["rows"]}
    sampled, exact = by["sampled"], by.get("exact")
    training = sorted(data["training"]["CPU [s]"])[len(data["training"]["CPU [s]"]) // 2]

    def em(r: dict) -> str:
        return (
            f"{'converged' if r['converged'] else 'did not converge'} in {r['EM steps']} EM steps"
        )

    text = (
        f"n = {data['n']:,}: sampled {sig(sampled['CPU [s]'])} CPU s, "
        f"{times(sampled['× MAP training CPU'])} the MAP's {sig(training)} s of training"
    )
    if exact is None:
        return f"{text} ({em(sampled)})"
    variance = sampled["logit variance / exact's"] - 1
    return (
        f"{text} and {pct(sampled['× exact CPU'])} of exact's {sig(exact['CPU [s]'])} s; "
        f"sampled {em(sampled)} to α = {sig(sampled['alpha'])}, exact {em(exact)} to "
        f"α = {sig(exact['alpha'])} ({pct(sampled['α / exact α'] - 1, sign=True)}); the sampled "
        f"logit variance is {pct(variance, sign=True)} from exact's at the sampled α"
    )


def plan_accuracy(data) -> str:
    """Each stage's measured CPU over the cost plan's estimate, and the plan's own cost."""
    row = next(r for r in data["rows"] if "plan" in r)
    ratios = [
        f"{stage} {times(measured['cpu_seconds'] / row['plan']['stages'][stage]['cpu_seconds'])}"
        for stage, measured in row["stages"].items()
    ]
    share = row["plan"]["CPU [s]"] / row["CPU [s]"]
    return (
        f"D = {data['D']:,}, n = {data['n']:,}: measured over estimated, {', '.join(ratios)}; the "
        f"plan cost {sig(row['plan']['CPU [s]'], 2)} CPU s, {pct(share)} of the fit's"
    )


TIE = 1e-3
"""Nats within which two test NLLs count as equal (the problems' test sets have 30–160 points)."""


def regression_defaults(data) -> str:
    """The defaults against laplace-torch's marglik: NLL gaps, CPU, and the evidence where behind."""
    rows = data["defaults"]
    gaps = [r["default − lt-marglik"] for r in rows]
    text = (
        f"test NLL minus laplace-torch's marglik {span(gaps, lambda x: sig(x, 2))} nats, at "
        f"{span([r['× lt-marglik CPU'] for r in rows], times)} its CPU"
    )
    behind = [r for r in rows if r["default − lt-marglik"] > TIE]
    if not behind:
        return f"{text}; never more than {TIE} nats behind it"
    evidence = "evidence − lt's"
    listed = ", ".join(
        f"{r['problem']} {r['regime']} by {sig(r['default − lt-marglik'], 2)} nats, with a Laplace "
        f"evidence {sig(r[evidence], 3)} nats higher than laplace-torch's"
        for r in behind
    )
    return f"{text}; more than {TIE} nats behind on {len(behind)} of {len(rows)}: {listed}"


def regression_sampled(data) -> str:
    """The iterative path (CG, sampled γ̂ and predictive) against laplace-torch, and its fidelity."""
    rows = data["sampled"]
    gaps = [r["sampled-cg − lt-marglik"] for r in rows]
    exact = [r["exact at its (α, σ) − lt-marglik"] for r in rows]
    return (
        f"test NLL minus laplace-torch's marglik {span(gaps, lambda x: sig(x, 2))} nats (the exact "
        f"posterior at the same α and σ {span(exact, lambda x: sig(x, 2))}), at "
        f"{span([r['× lt-marglik CPU'] for r in rows], times)} its CPU; per-point variance "
        f"{span([r['variance rel. diff.'] for r in rows], pct)} from exact's, against a "
        f"Monte-Carlo bound of {pct(rows[0]['MC bound 2/√S'])}"
    )


PEER_NAMES = {
    "lt-kron-marglik": "KFAC",
    "lt-lastlayer-marglik": "last-layer",
    "lt-diag-marglik": "diagonal",
    "ensemble": "ensemble",
    "map": "MAP",
}


def prior_rules(data) -> str:
    """At κ = 5 on the test set: the validation oracle, each rule's distance from it, the peers'."""
    oracle, rules = data["oracles"]["5"], data["rules"]

    def gap(r: dict) -> str:
        return f"α = {sig(r['α'], 3)}, {sig(r['Δ oracle κ=5'], 2)}"

    theta = [r for r in rules if r["rule"].startswith("EM, θ*")]
    tangent = [r["Δ oracle κ=5"] for r in rules if r["rule"].startswith("EM, tangent")]
    library = [r for r in rules if r["rule"].startswith("library EM")]
    nll = next(r for r in rules if r["rule"] == "validation grid, NLL (either prior)")
    parts = [
        f"validation oracle {oracle['prior']} α = {sig(oracle['α'], 3)}"
        + (" (the grid's edge)" if oracle["at the grid's edge"] else "")
        + f", test κ = 5 joint LL {sig(oracle['test joint LL κ=5'], 3)}; from it: EM with θ* "
        + ", ".join(f"{r['prior']} {gap(r)}" for r in theta),
        f"EM with the tangent mode (the benchmark's rows) {span(tangent, lambda x: sig(x, 2))}",
        *(f"the library's sampled EM with mean={r['mean']!r} {gap(r)}" for r in library),
        f"validation grid on NLL {sig(nll['Δ oracle κ=5'], 2)}",
        "peers' test κ = 5: "
        + ", ".join(
            f"{PEER_NAMES[m]} {sig(v['joint LL κ=5'], 3)}" for m, v in data["peers"].items()
        ),
    ]
    return "; ".join(parts)


def fit_cpu(reference: str, others: tuple[str, ...]) -> Callable:
    """Mean fit CPU seconds of ``reference`` and ``others`` over the seeds with ``reference``."""

    def figure(reports) -> str:
        seeds = [r for r in reports if any(x["method"] == reference for x in r["results"])]
        if not seeds:
            return f"`{reference}` has not run"

        def mean(method: str) -> str:
            cpu = [row(r["results"], method=method)["fit CPU [s]"] for r in seeds]
            return f"{statistics.fmean(cpu):,.0f}"

        rest = ", ".join(f"`{m}` {mean(m)}" for m in others)
        over = "one seed" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"
        return f"`{reference}` {mean(reference)} CPU s against {rest} ({over})"

    return figure


def seed_fit_cpu(method: str, seed: int) -> Callable:
    """A figure: ``method``'s fit CPU seconds on MAP seed ``seed``, by stage, and its sketch rank."""

    def figure(reports) -> str:
        report = next(r for r in reports if r["settings"]["seed"] == seed)
        r = row(report["results"], method=method)
        stages = ", ".join(f"{k} {v['cpu_seconds']:,.0f}" for k, v in r["em costs"].items())
        rank = re.search(r"rank-(\d+) Nyström", r["solve"])
        sketch = f"; sketch rank {rank.group(1)}" if rank else ""
        return f"{r['fit CPU [s]']:,.0f} CPU s ({stages}{sketch})"

    return figure


def em_start(data) -> str:
    """The exact fixed point, the sketch's start alone and completed by the diagonal."""
    rows, exact = data["rows"], data["rows"][0]["α"]

    def start(name: str, diagonal: str = "") -> str:
        r = next(r for r in rows if r["start"] == name and r["diagonal"] == diagonal)
        return f"{sig(r['α'], 3)} (log ratio {r['log(α / exact)']:+.2f})".replace("-", "−")

    library = data.get("library")
    text = (
        f"EM's fixed point α = {sig(exact, 3)}; the rank-100 sketch alone starts at "
        f"{start('sketch, rank 100')}, completed by the exact diagonal at "
        f"{start('sketch, rank 100, + diagonal', 'exact')} and by 32 probes' estimate at "
        f"{start('sketch, rank 100, + diagonal', '32 probes')}"
    )
    if library:
        text += f"; the library's own start {sig(library['start'], 3)}"
    return text


def regression_peer(data) -> str:
    """laplace-torch's marglik run to convergence where the defaults trail its 100 steps."""
    if not data["rows"]:
        return (
            f"the defaults trail laplace-torch's 100-step marglik by more than {TIE} nats nowhere"
        )
    return "; ".join(
        f"{r['problem']} {r['regime']}: laplace-torch's marglik {'converged' if r['converged'] else 'still moving'} "
        f"after {r['steps']:,} steps, its α {sig(r['lt 100 steps α'], 3)} → {sig(r['lt converged α'], 3)} "
        f"(the defaults' {sig(r['default α'], 3)}) and its test NLL {sig(r['lt 100 steps NLL'], 4)} → "
        f"{sig(r['lt converged NLL'], 4)} (the defaults' {sig(r['default NLL'], 4)}), its evidence "
        f"{sig(r['evidence gain'], 3)} nats higher"
        for r in data["rows"]
    )


FIGURES: dict[str, tuple[str, Callable]] = {
    # solver fidelity
    "solver-table": ("solver_fidelity", solver_table),
    "preconditioner-summary": ("preconditioners", preconditioner_summary),
    "mean-solve-summary": ("mean_solve", mean_solve_summary),
    "sgd-kfac-misses": ("preconditioners", sgd_kfac_misses),
    "solver-samples": ("solver_fidelity", lambda d: str(d["samples"])),
    "solver-point-fidelity": ("solver_fidelity", point_fidelity),
    "solver-mc": (
        "solver_fidelity",
        lambda d: span([r["mc"] for r in d["rows"]], lambda x: pct(x, 2)),
    ),
    "solver-auto-cholesky": ("solver_fidelity", auto_counts),
    "solver-auto-iterative": ("solver_fidelity", iterative_defaults),
    "solver-error-estimate": ("solver_fidelity", error_estimate_separation),
    "cholesky-small": ("solver_fidelity", solver_cpu("linear-regression-n500")),
    "cholesky-digits": ("solver_fidelity", solver_cpu("digits-mlp")),
    "cholesky-vs-cg": ("solver_fidelity", cholesky_against_cg),
    "cg-iterations": ("solver_fidelity", cg_iterations),
    "cg-worst": ("solver_fidelity", cg_worst_error),
    "sgd-summary": ("solver_fidelity", sgd_summary),
    "jacobi-summary": ("solver_fidelity", jacobi_summary),
    "fashion-samples": ("solver_fidelity-fashion", lambda d: str(d["samples"])),
    "fashion-mc": ("solver_fidelity-fashion", lambda d: pct(d["rows"][0]["mc"])),
    "fashion-exact-seconds": (
        "solver_fidelity-fashion",
        lambda d: f"{d['rows'][0]['exact_seconds']:,.0f}",
    ),
    "fashion-cg-steps": ("solver_fidelity-fashion", lambda d: str(fashion_row("default")["steps"])),
    "fashion-cg-seconds": (
        "solver_fidelity-fashion",
        lambda d: f"{fashion_row('default')['seconds']:,.0f}",
    ),
    "fashion-jacobi": (
        "solver_fidelity-fashion",
        lambda d: pct(fashion_row("SGD-jacobi")["err_same_noise"]),
    ),
    "fashion-sdd": ("solver_fidelity-fashion", lambda d: pct(fashion_row("SDD")["err_same_noise"])),
    "sdd-errors": ("solver_fidelity-sdd", sdd_errors),
    "sdd-budgets": ("solver_fidelity-sdd", sdd_budgets),
    # sampler convergence
    "sc-blr-lv": ("sampler_convergence", sampler("BLR", "low_variance")),
    "sc-blr-naive": ("sampler_convergence", sampler("BLR", "naive")),
    "sc-mlp-lv": ("sampler_convergence", sampler("MLP", "low_variance")),
    "sc-mlp-naive": ("sampler_convergence", sampler("MLP", "naive")),
    # EM
    "em-gap": ("em_trajectory", em_gap),
    "em-iso-sampled": (
        "em_trajectory",
        value("final α", prior="isotropic", method="SampledLaplace"),
    ),
    "em-iso-exact": ("em_trajectory", value("final α", prior="isotropic", method="ExactLaplace")),
    "em-g-sampled": ("em_trajectory", value("final α", prior="g-prior", method="SampledLaplace")),
    "em-g-exact": ("em_trajectory", value("final α", prior="g-prior", method="ExactLaplace")),
    "em-start": (
        "em_trajectory",
        lambda d: "; ".join(
            f"{prior} {sig(row(d['rows'], prior=prior, method=AUTO_START)['EM CPU [s]'], 2)} CPU s "
            f"in {row(d['rows'], prior=prior, method=AUTO_START)['EM steps']} steps against "
            f"{sig(row(d['rows'], prior=prior, method='SampledLaplace')['EM CPU [s]'], 2)} s in "
            f"{row(d['rows'], prior=prior, method='SampledLaplace')['EM steps']}"
            for prior in ("isotropic", "g-prior")
        ),
    ),
    "em-g-exact-converged": (
        "em_trajectory",
        lambda d: (
            "converged"
            if row(d["rows"], prior="g-prior", method="ExactLaplace")["converged"]
            else f"not converged after {row(d['rows'], prior='g-prior', method='ExactLaplace')['EM steps']} steps"
        ),
    ),
    "default-workflow-4000": ("default_workflow", default_workflow),
    "default-workflow-10000": ("default_workflow-n10000", default_workflow),
    "regression-rules": ("regression_priors", regression_rules),
    "regression-defaults": ("regression_priors", regression_defaults),
    "regression-sampled": ("regression_priors", regression_sampled),
    "regression-peer": ("regression_peer", regression_peer),
    "rules-overconfident": ("prior_rules-overconfident", prior_rules),
    "rules-calibrated": ("prior_rules-calibrated", prior_rules),
    "rules-lora": ("prior_rules-lora", prior_rules),
    "rules-digits": ("prior_rules-digits", prior_rules),
    "em-start-cnn": ("em_start-overconfident", em_start),
    "plan-accuracy-cnn": ("default_workflow-cnn-plan", plan_accuracy),
    "plan-accuracy-resnet": ("default_workflow-resnet-plan", plan_accuracy),
    # siblings
    "sib-nll-sampled": ("siblings", value("NLL", method="sampled-em")),
    "sib-nll-exact": ("siblings", value("NLL", method="exact-em")),
    "sib-dyadic-sampled": ("siblings", value("dyadic κ=10", method="sampled-em")),
    "sib-dyadic-exact": ("siblings", value("dyadic κ=10", method="exact-em")),
    "sib-mem-sampled": ("siblings", value("peak memory [MB]", method="sampled-em")),
    "sib-mem-exact": ("siblings", value("peak memory [MB]", method="exact-em")),
    "sib-full-seconds": ("siblings", value("fit [s]", method="lt-full-marglik")),
    "sib-full-mem": ("siblings", value("peak memory [MB]", method="lt-full-marglik")),
    "sib-peers-val": (
        "siblings",
        sibling_range(["lt-kron-val", "lt-diag-val", "lt-lastlayer-val"], "dyadic κ=10"),
    ),
    "sib-peers-marglik": (
        "siblings",
        sibling_range(
            ["lt-kron-marglik", "lt-diag-marglik", "lt-lastlayer-marglik"], "dyadic κ=10"
        ),
    ),
    "sib-map-dyadic": ("siblings", value("dyadic κ=10", method="MAP")),
    "sib-nystrom": ("siblings", value("dyadic κ=10", 2, method="nystrom-em")),
    "sib-exact-val": ("siblings", value("dyadic κ=10", 2, method="exact-val")),
    "sib-ella": ("siblings", value("dyadic κ=10", 2, method="lt-ella-val")),
    "sib-map-nll": ("siblings", value("NLL", 2, method="MAP")),
    # ResNet-18
    "r18-sampler-train": ("scaling-resnet18", resnet18("sampler ÷ train (CPU)")),
    "r18-sampler-floor": ("scaling-resnet18", resnet18("sampler ÷ floor (CPU)")),
    "r18-floor-train": ("scaling-resnet18", resnet18("floor ÷ train (CPU)")),
    "r18-setup": ("scaling-resnet18", resnet18("with set-up ÷ train (CPU)")),
    "r18-uncertainty": ("scaling-resnet18", r18_uncertainty),
    # tomography
    "t60-alpha-sampled": (
        "tomography-60/results",
        value("prior_precision", 4, "results", method="sampled-dual"),
    ),
    "t60-alpha-exact": (
        "tomography-60/results",
        value("prior_precision", 4, "results", method="exact"),
    ),
    "t60-sampled": ("tomography-60/results", tomography_lls("sampled-dual", 2)),
    "t60-dropout": ("tomography-60/results", tomography_lls("mc-dropout", 4)),
    "t60-exact-k": ("tomography-60/results", tomography_lls("exact (K = 128)", 2)),
    "t60-exact": ("tomography-60/results", tomography_lls("exact")),
    "t60-wall": (
        "tomography-60/results",
        joined(
            "{} min against {} min",
            value("wall-clock [min]", 3, "results", method="sampled-dual"),
            value("wall-clock [min]", 3, "results", method="exact"),
        ),
    ),
    "t60-ratio": ("tomography-60/results", tomo_ratio),
    "t120-sampled": ("tomography-120/results", tomography_lls("sampled-dual")),
    "t120-dropout": ("tomography-120/results", tomography_lls("mc-dropout")),
    "t120-exact-k": ("tomography-120/results", tomography_lls("exact (K = 64)")),
    "t120-wall": (
        "tomography-120/results",
        joined(
            "{} min against sampled's {} min",
            value("wall-clock [min]", 2, "results", method="exact"),
            value("wall-clock [min]", 2, "results", method="sampled-dual"),
        ),
    ),
    # the Fashion-MNIST ResNet-8
    "resnet-k5": (
        RESNET,
        joined(
            "{} against the MAP's {}",
            value("joint LL κ=5", 4, "results", method="sampled"),
            value("joint LL κ=5", 4, "results", method="map"),
        ),
    ),
    "resnet-alpha": (RESNET, lambda d: alpha_gap("sampled", "exact")([d])),
    "resnet-em": (RESNET, lambda d: em_convergence(("sampled", "exact"))([d])),
    # the Fashion-MNIST CNN, calibrated and overconfident
    "cnn-map": (CNN, seed_paired("sampled", "map")),
    "cnn-ensemble": (CNN, seed_paired("sampled", "ensemble")),
    "cnn-kfac": (CNN, seed_paired("sampled", "lt-kron-marglik")),
    "cnn-alpha": (CNN, alpha_gap("sampled", "exact")),
    "cnn-em": (CNN, em_convergence(("sampled", "exact"))),
    "cal-default": (CNN, default_wins),
    "cal-default-runs": (CNN, em_runs("sampled-default")),
    "cal-default-diag": (CNN, seed_paired("sampled-default", "lt-diag-marglik")),
    "cal-default-cpu": (
        CNN,
        fit_cpu("sampled-default", ("exact", "lt-kron-marglik", "ensemble")),
    ),  # fmt: skip
    "cal0-default-fit": (CNN, seed_fit_cpu("sampled-default", 0)),
    "over0-default-fit": (OVER, seed_fit_cpu("sampled-default", 0)),
    "over-confidence": (OVER, seed_value("map", "confidence")),
    "over-accuracy": (OVER, seed_value("map", "accuracy")),
    "over-ece": (OVER, seed_value("map", "ECE")),
    "over-map": (OVER, seed_paired("sampled-isotropic", "map")),
    "over-ensemble": (OVER, seed_paired("sampled-isotropic", "ensemble")),
    "over-kfac": (OVER, seed_paired("sampled-isotropic", "lt-kron-marglik")),
    "over-alpha": (OVER, alpha_gap("sampled-isotropic", "exact-isotropic")),
    "over-em": (OVER, em_convergence(("sampled-isotropic", "exact-isotropic"))),
    "over-default": (OVER, default_wins),
    "over-default-em": (OVER, em_convergence(("sampled-default",))),
    "over-default-runs": (OVER, em_runs("sampled-default")),
    "em-rtol-digits": ("em_rtol-digits-cnn", em_rtol),
    "em-rtol-cnn": ("em_rtol-fashion-mnist-cnn", em_rtol),
    "block-cg-32": ("block_cg", block_cg(32)),
    "block-cg-8": ("block_cg", block_cg(8)),
    "block-cg-cnn": ("block_cg-fashion-mnist-cnn", block_cg(32)),
    "auto-rank": ("preconditioner_rank-fashion-mnist-cnn-calibrated-seed-0", auto_rank),
    "over-default-cpu": (
        OVER,
        fit_cpu("sampled-default", ("exact-isotropic", "lt-kron-marglik", "ensemble")),
    ),
    # LoRA
    "lora-alpha": ("lora/results", lambda d: alpha_gap("sampled", "exact")([d])),
    # scaling
    "ratio-cnn": ("scaling-ratio-cpu", value("ratio", model="cnn", batching="loop")),
    "ratio-resnet": ("scaling-ratio-cpu", value("ratio", model="resnet", batching="loop")),
    "ratio-cnn-vmap": ("scaling-ratio-cpu", value("ratio", model="cnn", batching="vmap")),
    "ratio-resnet-vmap": ("scaling-ratio-cpu", value("ratio", model="resnet", batching="vmap")),
    "dim-3m": (
        "scaling-dimension",
        joined(
            "{} s and {} GB",
            value("seconds", 3, d="3M", method="sampled"),
            lambda d: sig(row(d["rows"], d="3M", method="sampled")["peak memory [MB]"] / 1024, 2),
        ),
    ),
    "dim-20k-bound": ("scaling-dimension", full_laplace_bound),
    "dim-20k-error": (
        "scaling-dimension",
        lambda d: pct(row(d["rows"], d="20k", method="sampled")["variance error (mean)"]),
    ),
    "dim-3k-speedup": (
        "scaling-dimension",
        lambda d: (
            span(
                [
                    row(d["rows"], d="3k", method=f"lt-full-{b}")["time / sampled"]
                    for b in ("curvlinops", "backpack", "asdl")
                ],
                lambda x: sig(x, 2),
            )
            + "×"
        ),
    ),
    "data-memory": ("scaling-data", data_memory),
    "batching-mlp": ("tangent_batching", batching("MLP", (16, 64))),
    "batching-cnn": ("tangent_batching", batching("CNN", (16, 64))),
    "dense-subnetwork": (
        "dense_features",
        value("speed-up", 2, method="subnetwork (1,000 weights)"),
    ),
    "dense-exact": ("dense_features", value("speed-up", 2, method="exact (all weights)")),
}
