"""The progress bar of every long job (benchmark, training, diffusion), through rich; nothing when disabled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(enabled: bool = True, *, transient: bool = False, remaining: bool = False, **options: Any) -> Iterator:
    """A ``rich.progress.Progress`` (description, bar, done/total, elapsed time, and the estimated time left with
    ``remaining``) for the ``with`` block, or None when not ``enabled``; ``options`` go to ``Progress``."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, transient=transient, **options) as progress:
        yield progress
