import subprocess
import sys

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
