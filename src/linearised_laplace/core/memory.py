r"""A fit's memory, planned before it is spent.

A fit holds two kinds of large tensors:

- what its posterior needs to run at all: the samples and the solver's state (``[S, D]`` each), a
  preconditioner's sketch (``[D, r]``), a dense GGN and its Cholesky factor (``[D, D]``), one
  batch's Jacobian (``[b, C, D]``);
- the training features ``Φ`` ``[n, C, D]``, which are optional: held, they turn every later data
  pass (a solver iteration, the mean, ``γ̂``) into a matrix product, at about ``C/2`` JVP + VJP
  passes to build.

:func:`plan_memory` refuses a budget below the first and holds ``Φ`` where the rest of the budget
allows. The default budget is half the memory available when the fit starts
(:func:`default_budget_gib`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 2**30
FALLBACK_GIB = 2.0
"""The budget where the available memory cannot be read."""
BUDGET_SHARE = 0.5
"""The share of the available memory that a fit takes by default."""


def available_memory_gib(device: torch.device) -> float | None:
    """Free memory on ``device`` in GiB: CUDA's free memory, else Linux's ``MemAvailable``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / GIB
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return None


def default_budget_gib(device: torch.device) -> float:
    """:data:`BUDGET_SHARE` of :func:`available_memory_gib`, or :data:`FALLBACK_GIB` if unknown."""
    available = available_memory_gib(device)
    return FALLBACK_GIB if available is None else BUDGET_SHARE * available


def gib(n_elements: float, dtype: torch.dtype) -> float:
    """The size of ``n_elements`` of ``dtype`` in GiB."""
    return n_elements * dtype.itemsize / GIB


@dataclass(frozen=True)
class MemoryPlan:
    """What a fit will hold, in GiB, against its budget.

    Attributes:
        budget_gib: The budget (``memory_gib``, or its default).
        needs: What the posterior needs to run at all, by name.
        features_gib: The size of the training features ``Φ`` ``[n, C, D]``.
        hold_features: Whether ``Φ`` is held (it fits in what the needs leave).
    """

    budget_gib: float
    needs: dict[str, float]
    features_gib: float
    hold_features: bool

    @property
    def total_gib(self) -> float:
        """What the fit holds: the needs, and ``Φ`` if held."""
        return sum(self.needs.values()) + self.features_gib * self.hold_features

    def summary(self) -> str:
        """One line: each part's size, whether ``Φ`` is held, the total against the budget."""
        parts = [f"{name} {size_text(size)}" for name, size in self.needs.items()]
        held = "held" if self.hold_features else "not held: every data pass runs the network"
        parts.append(f"features Φ {size_text(self.features_gib)} ({held})")
        return (
            f"memory plan: {'; '.join(parts)}. Total {size_text(self.total_gib)} of a "
            f"{size_text(self.budget_gib)} budget (memory_gib)."
        )


def size_text(size_gib: float) -> str:
    """``"3.3 GiB"``, ``"12 MiB"`` or ``"0.4 MiB"``."""
    if size_gib >= 1:
        return f"{size_gib:.3g} GiB"
    return f"{size_gib * 1024:.2g} MiB" if size_gib * 1024 < 10 else f"{size_gib * 1024:.0f} MiB"


def plan_memory(
    needs: dict[str, float],
    features_gib: float,
    budget_gib: float,
    feature_limit_gib: float | None = None,
) -> MemoryPlan:
    """Plan a fit: refuse it if ``needs`` exceed ``budget_gib``, else hold ``Φ`` if it fits.

    Args:
        needs: GiB of each tensor the posterior needs to run at all.
        features_gib: GiB of the training features ``Φ``.
        budget_gib: The fit's budget.
        feature_limit_gib: A further cap on ``Φ`` (``None``: none; ``0``: never hold it).

    Raises:
        MemoryError: The needs alone exceed the budget; the message names the smallest budget
            that runs and what takes the memory.
    """
    required = sum(needs.values())
    if required > budget_gib:
        parts = ", ".join(f"{name} {size:.3g} GiB" for name, size in needs.items())
        raise MemoryError(
            f"This fit needs at least {required:.3g} GiB ({parts}), more than memory_gib = "
            f"{budget_gib:.3g}. Pass memory_gib={required * 1.1:.3g} or more, or need less: fewer "
            "samples (n_samples), a smaller batch size, a lower preconditioner_rank, or fewer "
            "linearised weights (parameters=...)."
        )
    room = budget_gib - required
    if feature_limit_gib is not None:
        room = min(room, feature_limit_gib)
    return MemoryPlan(budget_gib, needs, features_gib, features_gib <= room and features_gib > 0)
