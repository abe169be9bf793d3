"""The data-parallel test's worker: ``torchrun --nproc-per-node 2 -m tests.distributed_worker OUT``.

Every rank runs :func:`fit_all` (the same calls a single process makes) and writes its results to
``OUT/rank{r}.safetensors``, then runs the misuse cases and writes their errors to
``OUT/rank{r}.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

import linearised_laplace as lla

from .cases import classification_data, mlp

N_DATA, BATCH = 97, 32  # the last global batch holds one point: rank 1's share is empty


def fit_all() -> dict[str, torch.Tensor]:
    """Sampled LLA (EM with the g-prior), exact EM, a SWAG subnetwork and Nyström EM, in float64."""
    torch.set_default_dtype(torch.float64)
    loader = DataLoader(TensorDataset(*classification_data(N_DATA)), batch_size=BATCH)
    out = {}
    sampled = lla.SampledLaplace(
        mlp(hidden=8), n_samples=3, seed=3, g_prior=True, solver=lla.SGD(n_epochs=4), progress=False
    )
    sampled.optimize_prior_precision(loader, max_iter=2, n_em_samples=2, tol=1e-12)
    out["sampled.alpha"], out["sampled.samples"] = (
        sampled.prior_precision,
        sampled.posterior_samples,
    )
    sgd_mean = lla.SampledLaplace(
        mlp(hidden=8), n_samples=2, mean_solver=lla.SGD(n_epochs=10), solver=lla.SGD(n_epochs=2)
    )
    sgd_mean.optimize_prior_precision(loader, max_iter=1, n_em_samples=2)
    out["sgd_mean.alpha"] = sgd_mean.prior_precision
    exact = lla.ExactLaplace(mlp(hidden=8), seed=3, progress=False)
    exact.optimize_prior_precision(loader, max_iter=3, tol=1e-12)
    out["exact.alpha"], out["exact.covariance"] = exact.prior_precision, exact.posterior_covariance
    subnet = lla.SubnetworkLaplace(mlp(hidden=8), n_params=10, seed=3, progress=False)
    subnet.fit(loader)
    out["subnetwork.indices"] = subnet.linearisation.selection.indices.double()
    nystrom = lla.NystromLaplace(mlp(hidden=8), n_points=30, rank=6, seed=3, progress=False)
    nystrom.optimize_prior_precision(loader, max_iter=2, tol=1e-12)
    out["nystrom.alpha"], out["nystrom.samples"] = (
        nystrom.prior_precision,
        nystrom.posterior_samples,
    )
    half = SubsetRandomSampler(range(0, N_DATA, 2))  # a validation split: the same on every rank
    subset = DataLoader(loader.dataset, batch_size=BATCH, sampler=half)
    subset_fit = lla.ExactLaplace(mlp(hidden=8), seed=3, progress=False).fit(subset)
    out["subset.covariance"] = subset_fit.posterior_covariance
    return {k: v.detach().double().reshape(-1).contiguous() for k, v in out.items()}


def misuse() -> dict[str, str]:
    """The errors of runs that ranks would get wrong."""
    x, y = classification_data(N_DATA)
    cases = {
        "batch": lambda: lla.SampledLaplace(mlp()).fit(DataLoader(TensorDataset(x, y), 1)),
        "seed": lambda: lla.SampledLaplace(mlp(), seed=dist.get_rank()).fit((x, y)),
        "shapes": lambda: lla.SampledLaplace(mlp(hidden=4 + dist.get_rank())).fit((x, y)),
        "dual": lambda: lla.SampledLaplace(mlp(), space="dual").fit((x, y)),
        "data": lambda: lla.SampledLaplace(mlp()).fit(
            DataLoader(
                TensorDataset(x, y), 32, sampler=SubsetRandomSampler(range(dist.get_rank(), 90, 2))
            )
        ),
    }
    errors = {}
    for name, case in cases.items():
        try:
            case()
            errors[name] = ""
        except ValueError as err:
            errors[name] = str(err)
    return errors


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out, rank = Path(sys.argv[1]), dist.get_rank()
    save_file(fit_all(), out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(misuse()))
    dist.barrier()
    dist.destroy_process_group()
    # Skip the interpreter's teardown: about 1 run in 10 aborted there ("terminate called without
    # an active exception", no Python frame) after every result had been written.
    os._exit(0)
