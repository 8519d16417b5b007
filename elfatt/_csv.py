"""Writing result rows as CSV, shared by the benchmark, training and experiment scripts."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["write_rows"]


def write_rows(rows: Sequence[Mapping[str, object]], path: Path) -> None:
    """Write ``rows`` (one mapping per line, the first one's keys as the header) to ``path``, creating its folder."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
