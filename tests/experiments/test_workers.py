import os
import subprocess
import sys
import time

import pytest
import torch

from linearised_laplace.experiments import workers
from linearised_laplace.experiments.workers import failure


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_failure_is_the_exception_line():
    done = _run("import warnings; warnings.warn('noise'); raise ValueError('bad width')")
    assert failure(done) == "ValueError: bad width"


def test_failure_names_the_signal_of_a_killed_worker():
    done = _run(
        "import os, signal, sys; print('last words', file=sys.stderr); os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert failure(done) == "killed by SIGKILL (the out-of-memory killer, most likely)"


def test_idle_cores_sees_a_busy_core():
    idle = workers.idle_cores(0.3)
    if idle is None:
        pytest.skip("no /proc/stat here")
    assert 1 <= idle <= (os.cpu_count() or 1)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = workers.idle_cores(0.5)
    finally:
        spin.kill()
    # a spinning process takes one whole core (one of one leaves the floor of 1)
    assert busy <= max(1, (os.cpu_count() or 1) - 1)


def test_omp_num_threads_is_respected(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setattr(workers, "idle_cores", lambda: 1 / 0)  # never consulted
    try:
        assert workers.use_idle_cores() == threads
    finally:
        torch.set_num_threads(threads)


def test_threads_follow_the_idle_cores(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(workers, "idle_cores", lambda: 1)
    try:
        assert workers.use_idle_cores() == 1
    finally:
        torch.set_num_threads(threads)
