import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.core import persistence

from ..cases import classification_data
from .resume_worker import run


def same_settings() -> lla.SampledLaplace:
    """A method built as :func:`run` builds it (the same seed, weights and settings)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return lla.SampledLaplace(net, n_samples=4, solver=lla.SGD(n_epochs=60), progress=False)


ROOT = Path(__file__).resolve().parents[2]
STARTED = "(initial_prior_precision, )?"  # EM's start comes from the sketch, so it differs too


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order as the worker
    yield
    torch.set_num_threads(threads)


def test_killed_em_run_resumes_to_the_same_result(tmp_path, one_thread):
    path = tmp_path / "em.safetensors"
    worker = subprocess.run(
        [sys.executable, "-m", "tests.methods.resume_worker", str(path), "3"], cwd=ROOT
    )
    assert worker.returncode == -signal.SIGKILL
    assert persistence.read(path)[1]["step"] == 3
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
    data = classification_data(200)
    with pytest.raises(ValueError, match=rf"another EM run: it differs in {STARTED}seed\."):
        changed.optimize_prior_precision(
            data, max_iter=2, n_em_samples=4, tol=1e-12, checkpoint=path
        )
    other_data = (data[0][:150], data[1][:150])
    with pytest.raises(ValueError, match=rf"differs in {STARTED}the training data"):
        same_settings().optimize_prior_precision(
            other_data, max_iter=2, n_em_samples=4, tol=1e-12, checkpoint=path
        )
    shifted = (data[0] + 1.0, data[1])  # same targets, other inputs: refused with Φ held too
    with pytest.raises(ValueError, match=rf"differs in {STARTED}the training data"):
        same_settings().optimize_prior_precision(
            shifted, max_iter=2, n_em_samples=4, tol=1e-12, checkpoint=path
        )
    trained = same_settings()
    with torch.no_grad():
        trained.model[0].bias.add_(0.1)
    with pytest.raises(ValueError, match=rf"differs in {STARTED}the network's weights"):
        trained.optimize_prior_precision(
            data, max_iter=2, n_em_samples=4, tol=1e-12, checkpoint=path
        )
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated, corrupted"):
        changed.optimize_prior_precision((x, y), max_iter=2, checkpoint=path)
