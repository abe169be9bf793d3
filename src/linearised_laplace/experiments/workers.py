"""The one-line reason a benchmark worker process failed."""

from __future__ import annotations

import signal
import subprocess


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
