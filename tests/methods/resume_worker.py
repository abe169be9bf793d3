"""A checkpointed EM run, used by the kill-and-resume test.

``python -m tests.methods.resume_worker PATH STEP`` SIGKILLs itself right after the checkpoint of EM
step ``STEP`` is written: a kill at a known step, independent of timing.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn

import linearised_laplace as lla
from linearised_laplace.core import persistence

from ..cases import classification_data


def run(checkpoint: str | None = None, max_iter: int = 8) -> lla.SampledLaplace:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))
    data = classification_data(200)
    la = lla.SampledLaplace(net, n_samples=4, solver=lla.SGD(n_epochs=60), progress=False)
    la.optimize_prior_precision(
        data, max_iter=max_iter, tol=1e-12, n_em_samples=4, checkpoint=checkpoint
    )
    return la


def kill_after(step: int) -> None:
    """SIGKILL this process once the checkpoint of EM step ``step`` is written."""
    write = persistence.write

    def write_then_kill(path, tensors, metadata):
        write(path, tensors, metadata)
        if metadata.get("step") == step:
            os.kill(os.getpid(), signal.SIGKILL)

    persistence.write = write_then_kill


if __name__ == "__main__":
    torch.set_num_threads(1)
    kill_after(int(sys.argv[2]))
    run(sys.argv[1])
