import pytest
import torch

from linearised_laplace import make_prior

IDS = torch.tensor([0, 0, 1, 2, 2, 2])
NAMES = ("a", "b", "c")


def test_isotropic_and_layerwise_diagonals():
    assert make_prior(2.0, IDS, NAMES).diag().tolist() == [2.0] * 6
    prior = make_prior([1.0, 2.0, 3.0], IDS, NAMES)
    assert not prior.is_isotropic
    assert prior.diag().tolist() == [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert prior.with_precision(5.0).diag().tolist() == [5.0] * 6


def test_diagonal_prior_has_one_precision_per_coordinate():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    prior = make_prior(values, IDS, NAMES)
    assert prior.is_diagonal and not prior.is_isotropic
    assert prior.diag().tolist() == values
    assert prior.groups.tolist() == list(range(6))
    assert not make_prior([1.0, 2.0, 3.0], IDS, NAMES).is_diagonal
    assert not prior.with_precision(2.0).is_diagonal


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0.0, ValueError, "must be finite and > 0"),
        (-2.0, ValueError, "must be finite and > 0"),
        (
            [1.0, 2.0],
            ValueError,
            r"one per parameter group \(3: a, b, c\) or one per parameter \(6\), got 2 values",
        ),
        ("big", TypeError, "must be a positive number"),
    ],
)
def test_bad_precisions_raise(value, error, match):
    with pytest.raises(error, match=match):
        make_prior(value, IDS, NAMES)
