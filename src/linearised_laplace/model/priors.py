r"""Gaussian priors ``θ ~ N(0, A^{-1})`` with diagonal precision ``A``.

``A`` is isotropic (``α I``), has one precision per parameter group (``⊕_g α_g I_{d_g}``, the
"layerwise" prior of laplace-torch, with one group per parameter tensor), or is diagonal, one
precision per weight (``diag(α_1, …, α_D)``, laplace-torch's ``[D]`` prior precision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.checks import check_positive


@dataclass(frozen=True)
class Prior:
    """A zero-mean Gaussian prior with diagonal precision.

    Attributes:
        precision: ``[1]`` (isotropic), ``[G]`` per group or ``[D]`` per coordinate (float64).
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
    def is_diagonal(self) -> bool:
        """Whether each coordinate has its own precision (and the groups are not the tensors)."""
        d = self.group_ids.numel()
        return self.precision.numel() == d != len(self.group_names) and d > 1

    @property
    def groups(self) -> Tensor:
        """``[D]`` index into ``precision`` of each coordinate (all 0 when isotropic)."""
        if self.is_diagonal:
            return torch.arange(self.group_ids.numel(), device=self.group_ids.device)
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
    """Build a prior from one precision, one per group, or one per coordinate.

    Args:
        precision: A positive float (isotropic), ``G`` positive values, one per group, or ``D``,
            one per coordinate (diagonal).
        group_ids: ``[D]`` group index of each coordinate.
        group_names: The ``G`` group names, used in error messages.

    Returns:
        The prior.

    Raises:
        ValueError: A precision is not positive, or the number of values is not 1, ``G`` or ``D``.
    """
    values = check_positive("prior_precision", precision)
    n_groups, n_params = len(group_names), group_ids.numel()
    if values.numel() not in (1, n_groups, n_params):
        shown = ", ".join(group_names[:6]) + (", ..." if n_groups > 6 else "")
        raise ValueError(
            f"`prior_precision` must be one value, one per parameter group ({n_groups}: {shown}) "
            f"or one per parameter ({n_params}), got {values.numel()} values."
        )
    return Prior(values, group_ids.long(), tuple(group_names))
