import subprocess
from datetime import datetime

import torch

from linearised_laplace.experiments.provenance import (
    ROOT,
    earlier_provenance,
    provenance,
    provenance_line,
)


def _head() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_a_run_records_the_commit_the_date_and_the_threads():
    made = provenance()
    assert made["commit"] == (_head() or None)
    assert isinstance(made["uncommitted changes"], bool)
    assert datetime.fromisoformat(made["date"]).tzinfo is not None
    assert made["threads"] == torch.get_num_threads()
    assert made["command"]


def test_the_line_names_the_command_commit_date_and_threads():
    record = {
        "command": "python benchmarks/x.py --fast",
        "commit": "0123456789abcdef",
        "uncommitted changes": True,
        "date": "2026-12-06T22:00:00+00:00",
        "threads": 1,
    }
    assert provenance_line(record) == (
        "Made by `python benchmarks/x.py --fast` at commit 0123456789 with uncommitted changes "
        "on 2026-12-06, 1 torch thread(s)."
    )


def test_a_file_made_before_records_is_dated_by_its_last_commit():
    earlier = earlier_provenance(ROOT / "README.md")
    if _head() is not None:
        assert len(earlier["commit"]) == 40
    assert provenance_line(earlier) == earlier["note"]
    assert "Made before results recorded their provenance" in earlier["note"]
