"""What each stage of a fit cost: wall and process CPU seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(costs: dict[str, dict[str, float]], stage: str) -> Iterator[None]:
    """Record the block's ``{"seconds", "cpu_seconds"}`` as ``costs[stage]``."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        costs[stage] = {
            "seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
        }
