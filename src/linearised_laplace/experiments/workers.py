"""Benchmark worker processes: running one, how many threads it takes, and why it failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def idle_cores(interval: float = 0.25) -> int | None:
    """Cores that other processes leave idle, from ``/proc/stat`` over ``interval`` seconds.

    ``None`` where ``/proc/stat`` cannot be read (not Linux).
    """

    def idle_and_total() -> tuple[int, int]:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait; user … steal

    try:
        idle0, total0 = idle_and_total()
        time.sleep(interval)
        idle1, total1 = idle_and_total()
    except (OSError, ValueError, IndexError):
        return None
    share = (idle1 - idle0) / max(1, total1 - total0)
    return max(1, round(share * (os.cpu_count() or 1)))


def use_idle_cores() -> int:
    """Give torch one thread per idle core (at most its default) unless ``OMP_NUM_THREADS`` is set.

    On a shared CPU, threads that outnumber the idle cores wait on one another at every parallel
    region, and a run slows down many times over. Returns the thread count.
    """
    idle = None if "OMP_NUM_THREADS" in os.environ else idle_cores()
    if idle is not None:
        torch.set_num_threads(min(torch.get_num_threads(), idle))
    return torch.get_num_threads()


def failure(done: subprocess.CompletedProcess) -> str:
    """The worker's exception (``Type: message``), or the signal that killed it.

    A traceback's last line is the exception; a process killed by a signal (the kernel's
    out-of-memory killer sends SIGKILL) leaves only whatever it printed last, so the signal is
    reported instead.
    """
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        hint = " (the out-of-memory killer, most likely)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    lines = (done.stderr or "").strip().splitlines()
    return lines[-1][:300] if lines else f"exit code {done.returncode}"


def run_worker(module: str, method: str, settings: dict) -> dict:
    """Run ``python -m module METHOD SETTINGS_JSON`` and return the JSON of its last stdout line.

    A worker that fails returns ``{"method": method, "error": ...}`` (:func:`failure`) instead.
    """
    done = subprocess.run(
        [sys.executable, "-m", module, method, json.dumps(settings)], capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"method": method, "error": failure(done)}
    return json.loads(done.stdout.strip().splitlines()[-1])
