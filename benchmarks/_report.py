"""Writing benchmark results: JSON for machines, a markdown table for people, both with provenance."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from linearised_laplace.experiments.provenance import (
    earlier_provenance,
    provenance,
    provenance_line,
)
from linearised_laplace.experiments.report import em_steps, em_unconverged

RESULTS = Path(__file__).resolve().parent / "results"
STARTED = provenance()  # the commit and date a benchmark run started at, not the ones it ended at


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def committed(name: str) -> tuple[dict, dict]:
    """``results/<name>.json`` and how it was made (recorded, or its last commit), for a rewrite."""
    path = RESULTS / f"{name}.json"
    payload = json.loads(path.read_text())
    return payload, payload.get("provenance") or earlier_provenance(path)


def kept(name: str, problems: set[str]) -> list[dict]:
    """The rows of ``results/<name>.json`` of other problems than ``problems`` (an ``--only`` rerun)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r["problem"] not in problems]


def write(name: str, payload: dict, markdown: str, made: dict | None = None) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md``, each saying how it was made.

    ``made``: the provenance of results made earlier and rewritten now (``None``: made now).
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    made = made or STARTED
    payload = {"machine": machine(), **payload, "provenance": made}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n\n" + provenance_line(made) + "\n")
    print(markdown)


def method_result(out: Path, method: str) -> dict | None:
    """A classification seed folder's committed result of ``method`` (``None``: not run)."""
    path = out / "methods" / f"{method}.json"
    return json.loads(path.read_text()) if path.exists() else None


def em_outcome(result: dict) -> dict:
    """A result's EM: its final ``α``, whether it converged, and its steps."""
    converged = bool(result.get("em_history")) and not em_unconverged(result)
    return {"α": result["prior_precision"][0], "converged": converged, "steps": em_steps(result)}
