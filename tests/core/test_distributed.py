"""Data parallelism: 2 gloo processes give what one process gives, and misuse is refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import linearised_laplace as lla
from linearised_laplace.core.distributed import Shard

from ..cases import classification_data, mlp
from ..distributed_worker import fit_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*command, "-m", "tests.distributed_worker", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_processes_equal_one_process(two_ranks):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = fit_all()
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(torch.float32)
    ranks = [load_file(two_ranks / f"rank{r}.safetensors") for r in range(2)]
    assert set(ranks[0]) == set(single)
    for name, value in single.items():
        # the ranks hold the same numbers, and those of one process up to the order of the sums
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-8, atol=1e-10, msg=name)


def test_ranks_that_disagree_are_refused_on_every_rank(two_ranks):
    for rank in range(2):
        errors = json.loads((two_ranks / f"rank{rank}.json").read_text())
        assert "global batch size (1) is smaller than the number of ranks (2)" in errors["batch"]
        assert "ranks disagree on seed" in errors["seed"]
        assert "ranks disagree on parameters" in errors["shapes"]
        assert "space='primal'" in errors["dual"]
        assert "ranks disagree on data" in errors["data"]


def test_a_distributed_sampler_is_refused():
    x, y = classification_data(8)
    dataset = TensorDataset(x, y)
    loader = DataLoader(dataset, 4, sampler=DistributedSampler(dataset, num_replicas=2, rank=0))
    with pytest.raises(ValueError, match="Remove the DistributedSampler"):
        lla.SampledLaplace(mlp()).fit(loader)


def test_shards_cover_each_batch_once():
    batch = torch.arange(7)
    parts = [Shard(rank, 3).local(batch) for rank in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    assert Shard().local(batch) is batch
    assert Shard.current() == Shard()
