"""How a results file was made: the command, the commit, whether the code differed, date, threads."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]  # the checkout, where the package is installed editable


def git(*args: str, root: Path = ROOT) -> str:
    """``git ARGS`` in ``root``: its output, or ``""`` where git or the checkout is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def _program() -> str:
    """``python benchmarks/<script>.py`` for a benchmark script, else the program's name (``lla``)."""
    program = Path(sys.argv[0] or "python").resolve()
    if program.parent == ROOT / "benchmarks":
        return f"python benchmarks/{program.name}"
    return program.name


def provenance() -> dict:
    """The record of a run made now (``commit`` is ``None`` outside a git checkout)."""
    return {
        "command": " ".join([_program(), *sys.argv[1:]]),
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted changes": bool(git("status", "--porcelain", "--", "src", "benchmarks/*.py")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
    }


def earlier_provenance(path: Path, root: Path = ROOT) -> dict:
    """The record of a results file made before records were kept: the last commit that changed it."""
    found = git("log", "-1", "--format=%H %cs", "--", str(path), root=root) or "unknown unknown"
    commit, date = found.split()
    return {
        "commit": commit,
        "date": date,
        "note": f"Made before results recorded their provenance; last committed in {commit[:10]} "
        f"({date}).",
    }


def provenance_line(record: dict) -> str:
    """One markdown sentence that says how a results file was made."""
    if "command" not in record:
        return record["note"]
    commit = (record.get("commit") or "unknown")[:10]
    dirty = " with uncommitted changes" if record.get("uncommitted changes") else ""
    return (
        f"Made by `{record['command']}` at commit {commit}{dirty} on {record['date'][:10]}, "
        f"{record['threads']} torch thread(s)."
    )
