import pytest
import torch

from linearised_laplace.core.memory import (
    available_memory_gib,
    default_budget_gib,
    gib,
    plan_memory,
)


def test_the_features_are_held_only_where_the_budget_leaves_room_for_them():
    needs = {"samples and solver state": 1.0, "preconditioner sketch": 0.5}
    assert plan_memory(needs, 2.0, budget_gib=3.5).hold_features
    assert not plan_memory(needs, 2.0, budget_gib=3.4).hold_features
    assert not plan_memory(needs, 2.0, budget_gib=100.0, feature_limit_gib=1.9).hold_features
    assert not plan_memory(needs, 2.0, budget_gib=100.0, feature_limit_gib=0.0).hold_features
    held = plan_memory(needs, 2.0, budget_gib=3.5)
    assert held.total_gib == 3.5 and plan_memory(needs, 2.0, 3.4).total_gib == 1.5
    assert "features Φ 2 GiB (held)" in held.summary() and "of a 3.5 GiB budget" in held.summary()
    assert "preconditioner sketch 512 MiB" in held.summary()


def test_a_budget_below_the_needs_is_refused_naming_one_that_runs():
    needs = {"dense GGN and its Cholesky factor": 3.0, "samples": 0.25}
    with pytest.raises(MemoryError, match=r"at least 3.25 GiB .*dense GGN.*memory_gib=3.58") as err:
        plan_memory(needs, 1.0, budget_gib=1.0)
    suggested = float(str(err.value).split("memory_gib=")[1].split()[0])
    assert not plan_memory(needs, 1.0, suggested).hold_features


def test_sizes_and_the_default_budget():
    assert gib(2**28, torch.float32) == 1.0 and gib(2**27, torch.float64) == 1.0
    available = available_memory_gib(torch.device("cpu"))
    assert available is None or available > 0
    expected = 2.0 if available is None else available / 2
    assert default_budget_gib(torch.device("cpu")) == pytest.approx(expected, rel=0.2)
