"""Progress bars for long passes (tqdm); ``enabled=None`` shows them only on a terminal.

Under ``torch.distributed`` only rank 0 shows them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch.distributed as dist
from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, enabled: bool | None, **kwargs) -> tqdm:
    """A tqdm bar, silent when ``enabled`` is False (and off a terminal when it is None)."""
    disable = None if enabled is None else not enabled
    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        disable = True
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)


def progress_note(text: str, *, enabled: bool | None) -> None:
    """One line among the progress bars, shown where they would be."""
    shown = sys.stderr.isatty() if enabled is None else enabled
    if shown and not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0):
        tqdm.write(text, file=sys.stderr)
