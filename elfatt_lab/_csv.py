"""Writing result rows as CSV, shared by the benchmark, training and experiment scripts."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from elfatt_lab._atomic import atomic_write_text

__all__ = ["write_rows", "publish_table"]


def write_rows(rows: Sequence[Mapping[str, object]], path: Path) -> None:
    """Write ``rows`` (one mapping per line) to ``path`` atomically, creating its folder; the header holds every key
    in the order it first appears, and a row without a key leaves its cell empty."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(text.getvalue(), path)


def publish_table(rows: Sequence[Mapping[str, object]], caption: str, table: str, out: Path | None, stem: str) -> None:
    """Print ``caption`` and the markdown ``table``; under ``out`` (when given) also write ``<stem>.csv`` from
    ``rows`` and ``<stem>.md`` with the caption and table."""
    print(caption)
    print(table)
    if out is not None:
        write_rows(rows, out / f"{stem}.csv")
        atomic_write_text(f"{caption}\n\n{table}\n", out / f"{stem}.md")
