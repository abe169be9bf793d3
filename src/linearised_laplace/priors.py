r"""Gaussian priors ``θ ~ N(0, A^{-1})`` with diagonal precision ``A``.

``A`` is isotropic (``α I``) or has one precision per parameter group (``⊕_g α_g I_{d_g}``, the
"layerwise" prior of laplace-torch, with one group per parameter tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_positive


@dataclass(frozen=True)
class Prior:
    """A zero-mean Gaussian prior with diagonal precision.

    Attributes:
        precision: ``[G]`` precision per group (float64); ``G = 1`` is isotropic.
        group_ids: ``[D]`` group of each coordinate.
        group_names: Name of each group (parameter tensor).
    """

    precision: Tensor
    group_ids: Tensor
    group_names: tuple[str, ...]

    @property
    def is_isotropic(self) -> bool:
        """Whether one precision is shared by all parameters."""
        return self.precision.numel() == 1

    @property
    def groups(self) -> Tensor:
        """``[D]`` index into ``precision`` of each coordinate (all 0 when isotropic)."""
        return torch.zeros_like(self.group_ids) if self.is_isotropic else self.group_ids

    def diag(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The diagonal of ``A``: ``[D]``."""
        return self.precision[self.groups].to(dtype=dtype, device=device)

    def with_precision(self, precision: float | Sequence[float] | Tensor) -> Prior:
        """A copy with new precision values (same grouping)."""
        return make_prior(precision, self.group_ids, self.group_names)


def make_prior(
    precision: float | Sequence[float] | Tensor, group_ids: Tensor, group_names: Sequence[str]
) -> Prior:
    """Build a prior from one precision, or one per group.

    Args:
        precision: A positive float (isotropic) or ``G`` positive values, one per group.
        group_ids: ``[D]`` group index of each coordinate.
        group_names: The ``G`` group names, used in error messages.

    Returns:
        The prior.

    Raises:
        ValueError: A precision is not positive, or the number of values is neither 1 nor ``G``.
    """
    values = check_positive("prior_precision", precision)
    n_groups = len(group_names)
    if values.numel() not in (1, n_groups):
        shown = ", ".join(group_names[:6]) + (", ..." if n_groups > 6 else "")
        raise ValueError(
            f"`prior_precision` must be one value or one per parameter group ({n_groups}: {shown}), "
            f"got {values.numel()} values."
        )
    return Prior(values, group_ids.long(), tuple(group_names))
