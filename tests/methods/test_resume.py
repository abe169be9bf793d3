import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace import persistence

from .resume_worker import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order as the worker
    yield
    torch.set_num_threads(threads)


def test_killed_em_run_resumes_to_the_same_result(tmp_path, one_thread):
    path = tmp_path / "em.safetensors"
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.methods.resume_worker", str(path)], cwd=ROOT
    )
    step, deadline = 0, time.monotonic() + 120
    while step < 2 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.005)
        if path.exists():
            step = persistence.read(path)[1]["step"]
    alive = worker.poll() is None
    worker.kill()  # SIGKILL, mid-step: no chance to clean up
    worker.wait()
    assert alive and 2 <= step < 8, (
        f"the worker was not caught mid-run (step {step}, alive {alive})"
    )
    resumed = run(checkpoint=str(path))
    fresh = run()
    assert [h["step"] for h in resumed.em_history] == list(range(9))
    torch.testing.assert_close(resumed.prior_precision, fresh.prior_precision, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        resumed.posterior_samples, fresh.posterior_samples, rtol=1e-8, atol=1e-12
    )
    finished = persistence.read(path)[1]
    assert finished["step"] == 8


def test_checkpoint_of_another_run_or_model_is_refused(tmp_path):
    path = tmp_path / "em.safetensors"
    run(checkpoint=str(path), max_iter=1)
    x = torch.randn(20, 3)
    y = torch.randint(0, 3, (20,))
    other = lla.SampledLaplace(torch.nn.Linear(3, 3), n_samples=4, progress=False)
    with pytest.raises(ValueError, match="written for a different model"):
        other.optimize_prior_precision((x, y), max_iter=2, checkpoint=path)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    changed = lla.SampledLaplace(
        net, n_samples=4, seed=5, solver=lla.SGD(n_epochs=60), progress=False
    )
    with pytest.raises(ValueError, match=r"other settings \(differs in: seed\)"):
        changed.optimize_prior_precision(
            (x, y), max_iter=2, n_em_samples=4, tol=1e-12, checkpoint=path
        )
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated, corrupted"):
        changed.optimize_prior_precision((x, y), max_iter=2, checkpoint=path)
