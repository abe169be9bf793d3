"""One timing protocol for every benchmark: warm-up runs, then repeats, medians of wall and CPU time.

A ratio is only as good as its denominator, so a floor and what is compared with it are both
measured by :func:`measure` with the same warm-up and repeats, in the same process. CPU time is the
process's (all threads), which a busy machine does not inflate the way it inflates wall time. A run
too long to repeat is timed once with :func:`stopwatch`, and its record says so (``repeats: 1``,
``warm-up: 0``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Wall and CPU seconds of each timed repeat, and how many untimed warm-up runs preceded them."""

    wall: tuple[float, ...]
    cpu: tuple[float, ...]
    warmup: int

    @property
    def wall_median(self) -> float:
        """Median wall seconds of the repeats."""
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        """Median CPU seconds (this process, all threads) of the repeats."""
        return statistics.median(self.cpu)

    def record(self, prefix: str = "") -> dict:
        """``{prefix + 'wall [s]': median, prefix + 'CPU [s]': median, ...}`` for a results row."""
        return {
            f"{prefix}wall [s]": self.wall_median,
            f"{prefix}CPU [s]": self.cpu_median,
            f"{prefix}repeats": len(self.wall),
            f"{prefix}warm-up": self.warmup,
        }


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int = 3,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> tuple[Any, Timing]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; returns the last result.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock is read, so that
    asynchronous device work is counted.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure needs repeats ≥ 1 and warmup ≥ 0; got {repeats} and {warmup}")
    result = None
    for _ in range(warmup):
        result = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        with stopwatch(sync) as clock:
            result = fn()
        walls.append(clock.timing.wall[0])
        cpus.append(clock.timing.cpu[0])
    return result, Timing(tuple(walls), tuple(cpus), warmup)


@dataclass
class _Clock:
    timing: Timing = field(default_factory=lambda: Timing((float("nan"),), (float("nan"),), 0))


@contextmanager
def stopwatch(sync: Callable[[], None] | None = None) -> Iterator[_Clock]:
    """Time one run of the ``with`` body: ``clock.timing`` after the block (one repeat, no warm-up)."""
    clock = _Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    yield clock
    if sync is not None:
        sync()
    clock.timing = Timing((time.perf_counter() - wall,), (time.process_time() - cpu,), 0)
