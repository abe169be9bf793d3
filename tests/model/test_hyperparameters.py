import pytest
import torch

from linearised_laplace import Categorical, Gaussian
from linearised_laplace.model.hyperparameters import Hyperparameters

GROUPS = (torch.tensor([0, 0, 1]), ("weight", "bias"))


def test_values_are_validated_once_and_copies_are_new_values():
    h = Hyperparameters.of([1.0, 2.0], Gaussian(0.5), *GROUPS)
    assert h.precision.tolist() == [1.0, 2.0] and h.sigma == 0.5
    moved = h.with_precision(3.0, *GROUPS).with_sigma(torch.tensor([0.2]))
    assert moved.precision.tolist() == [3.0] and moved.sigma == pytest.approx(0.2)
    assert h.precision.tolist() == [1.0, 2.0] and h.sigma == 0.5  # frozen
    assert h.prior(*GROUPS).diag().tolist() == [1.0, 1.0, 2.0]


def test_agreement_compares_precision_and_noise():
    h = Hyperparameters.of(1.0, Gaussian(0.5), *GROUPS)
    assert h.agrees(torch.tensor([1.0], dtype=torch.float64), Gaussian(0.5))
    assert not h.agrees(torch.tensor([1.0], dtype=torch.float64), Gaussian(0.6))
    assert not h.agrees(torch.tensor([2.0], dtype=torch.float64), Gaussian(0.5))
    assert Hyperparameters.of(1.0, Categorical(), *GROUPS).sigma == 1.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h: h.with_precision([1.0, 2.0, 3.0, 4.0], *GROUPS), "one value, one per"),
        (lambda h: h.with_precision(-1.0, *GROUPS), "prior_precision"),
        (lambda h: h.with_sigma(0.0), "sigma_noise"),
        (lambda h: Hyperparameters.of(1.0, Categorical(), *GROUPS).with_sigma(2.0), "regression"),
    ],
)
def test_bad_values_raise_what_was_expected(change, match):
    with pytest.raises(ValueError, match=match):
        change(Hyperparameters.of(1.0, Gaussian(0.5), *GROUPS))
