import pytest
import torch

from linearised_laplace.tuning.mackay import mackay_update


def test_mackay_update_clips_estimates_only():
    ids = torch.tensor([0, 0, 0, 1])
    mean = torch.tensor([1.0, 1.0, 0.0, 2.0])
    clipped = mackay_update(torch.tensor([5.0, 0.1]), mean, ids, 2)
    torch.testing.assert_close(clipped, torch.tensor([2.0 / 2.0, 0.5 / 4.0]))
    exact = mackay_update(torch.tensor([2.5, 0.9]), mean, ids, 2, clip=False)
    torch.testing.assert_close(exact, torch.tensor([2.5 / 2.0, 0.9 / 4.0]))


def test_mackay_update_clips_estimates_to_the_rank_of_the_ggn():
    ids = torch.zeros(100, dtype=torch.long)
    mean = torch.ones(100)
    # 10 observations: M has rank ≤ 10, so γ̂ = 40 (an overshoot) is clipped to 10 − 1
    clipped = mackay_update(torch.tensor([40.0]), mean, ids, 1, n_observations=10)
    torch.testing.assert_close(clipped, torch.tensor([9.0 / 100.0], dtype=torch.float64))
    unbounded = mackay_update(torch.tensor([40.0]), mean, ids, 1)
    torch.testing.assert_close(unbounded, torch.tensor([40.0 / 100.0], dtype=torch.float64))


def test_the_function_space_estimate_is_not_floored():
    mean, ids = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    tiny = torch.tensor([1e-6], dtype=torch.float64)
    assert float(mackay_update(tiny, mean, ids, 1)) == pytest.approx(0.25)  # floored at γ = 1
    assert float(mackay_update(tiny, mean, ids, 1, floor=False)) == pytest.approx(2.5e-7)
