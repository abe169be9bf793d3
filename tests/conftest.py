"""Float64 by default: every dense comparison in the suite runs in double precision."""

import pytest
import torch


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
