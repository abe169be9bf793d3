"""Progress for long passes: bars on a terminal, log lines elsewhere, nothing when switched off.

``enabled=None`` (the methods' default ``progress=None``) shows tqdm bars when stderr is a
terminal; otherwise (a job runner, output redirected to a file) each stage writes a plain line to
stderr — its name, how far it is, the time elapsed and an estimate of what remains — at most one
line every :data:`LOG_INTERVAL` seconds across all stages, and a closing line for a stage that
logged. ``enabled=True`` forces bars, ``False`` silences both. Under ``torch.distributed`` only
rank 0 reports.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator

import torch.distributed as dist
from tqdm.auto import tqdm

LOG_INTERVAL = 60.0
"""Seconds between two progress lines off a terminal."""

_last_line = [float("-inf")]  # when the last progress line was written, by any stage


def _other_rank() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0


def progress_bar(iterable: Iterable | None = None, *, enabled: bool | None, **kwargs):
    """The progress of one stage: bar, log or nothing.

    A tqdm bar on a terminal or for ``enabled=True``; a :class:`LogProgress` for ``None`` off a
    terminal; a silent bar for ``False`` or on a rank other than 0.
    """
    if enabled is None and not _other_rank() and not sys.stderr.isatty():
        return LogProgress(iterable, **kwargs)
    disable = _other_rank() or enabled is False  # tqdm's own None would hide forced bars off a tty
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)


def expect_total(
    bar, done: int, first: float, now: float, target: float, cap: int, since: int = 0
) -> None:
    """Set a stage that runs to a tolerance to its expected length, not its cap.

    From the geometric decrease of its error so far (``first`` after ``since`` steps, ``now``
    after ``done``) to ``target``: the estimate of what remains then follows the convergence
    (a solver at 16 of 1,000 allowed iterations that needs 30 is shown as 16/30).
    """
    if done - since < 2 or not 0 < target < now < first:
        return
    rate = math.log(first / now) / (done - since)
    bar.total = min(cap, done + math.ceil(math.log(now / target) / rate))


def progress_note(text: str, *, enabled: bool | None) -> None:
    """One line among the progress bars, shown wherever progress is (a terminal or a log)."""
    if enabled is not False and not _other_rank():
        tqdm.write(text, file=sys.stderr)


def duration_text(seconds: float) -> str:
    """``"42 s"``, ``"3 min 07 s"`` or ``"1 h 05 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LogProgress:
    """The part of tqdm's interface the library uses, writing rate-limited lines instead of a bar.

    A line: ``linearised-laplace: <stage> <n>/<total> (<percent>), <elapsed> elapsed, ~<left>
    left``; stages without a known total omit the estimate.
    """

    def __init__(
        self, iterable: Iterable | None = None, *, desc: str = "", total=None, initial=0, **_
    ):
        self.iterable = iterable
        self.desc = desc or "working"
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.n = self.start_n = initial
        self.postfix = ""
        self.start = time.perf_counter()
        self.logged = False
        if _last_line[0] == float("-inf"):
            _last_line[0] = self.start  # the first line comes after one interval of work

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        """Show ``values`` after the count (tqdm's method; ``refresh`` is for bars only)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; log a line if the last was long enough ago."""
        self.n += n
        now = time.perf_counter()
        if now - _last_line[0] >= LOG_INTERVAL:
            self._write(self.line(now), now)

    def line(self, now: float) -> str:
        """The progress line at time ``now``."""
        elapsed = now - self.start
        done = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        text = f"linearised-laplace: {self.desc} {done}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f} %)"
        text += f", {duration_text(elapsed)} elapsed"
        steps = self.n - self.start_n
        if self.total and steps > 0:
            text += f", ~{duration_text(elapsed / steps * (self.total - self.n))} left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def close(self) -> None:
        """Log the stage's total time, if any line was logged."""
        if self.logged:
            now = time.perf_counter()
            self._write(
                f"linearised-laplace: {self.desc} done in {duration_text(now - self.start)}", now
            )
            self.logged = False

    def _write(self, text: str, now: float) -> None:
        print(text, file=sys.stderr, flush=True)
        _last_line[0] = now
        self.logged = True
