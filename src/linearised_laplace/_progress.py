"""Progress bars for long passes (tqdm); ``enabled=None`` shows them only on a terminal."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, enabled: bool | None, **kwargs) -> tqdm:
    """A tqdm bar, silent when ``enabled`` is False (and off a terminal when it is None)."""
    disable = None if enabled is None else not enabled
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
