"""``elfatt bench --compare OLD NEW``: how the speed-ups of two runs' cells changed, against their noise."""

from __future__ import annotations

import sys
from pathlib import Path

from elfatt_lab.bench.report import read_rows
from elfatt_lab.bench.runner import Row, cell_key

__all__ = ["compare_runs", "change_rows"]


def _results(folder: Path) -> dict[tuple[str, str, str, str], Row]:
    path = folder / "results.csv"
    if not path.is_file():
        raise ValueError(f"{folder} holds no results.csv of elfatt bench")
    return {cell_key(row.level, row.mechanism, row.size, row.run_pass): row for row in read_rows(path)}


def change_rows(old: Path, new: Path) -> list[dict]:
    """Per cell in both runs with a speed-up against SDPA: old and new speed-up, their ratio, and whether the change
    exceeds the noise (the sum of both runs' spreads of the cell and of its SDPA baseline)."""
    before, after = _results(old), _results(new)
    changes = []
    for key, row in after.items():
        previous = before.get(key)
        if previous is None or not previous.speedup_vs_sdpa or not row.speedup_vs_sdpa or row.mechanism == "sdpa":
            continue
        level, _, size, run_pass = key
        spreads = [
            x.spread or 0.0
            for x in (
                row,
                previous,
                after.get(cell_key(level, "sdpa", size, run_pass)),
                before.get(cell_key(level, "sdpa", size, run_pass)),
            )  # fmt: skip
            if x is not None
        ]
        change = row.speedup_vs_sdpa / previous.speedup_vs_sdpa
        noise = sum(spreads)
        changes.append(
            dict(
                level=level,
                mechanism=row.mechanism,
                size=size,
                run_pass=run_pass,
                old=previous.speedup_vs_sdpa,
                new=row.speedup_vs_sdpa,
                change=change,
                noise=noise,
                beyond_noise=abs(change - 1) > noise,
            )  # fmt: skip
        )
    return changes


def compare_runs(old: Path, new: Path) -> int:
    """Print the table of :func:`change_rows`; 0, or 2 with one line if a folder holds no results."""
    try:
        changes = change_rows(old, new)
    except ValueError as error:
        print(f"elfatt bench --compare: error: {error}", file=sys.stderr)
        return 2
    print(f"speed-up vs SDPA, {old} -> {new}; *: a change beyond the noise (the cells' spreads added)")
    print("| level | mechanism | size | pass | old | new | change | noise |")
    print("|---|---|---|---|---|---|---|---|")
    for c in changes:
        mark = " *" if c["beyond_noise"] else ""
        print(
            f"| {c['level']} | {c['mechanism']} | {c['size']} | {c['run_pass']} | {c['old']:.2f}x | {c['new']:.2f}x | "
            f"{c['change']:.2f}x{mark} | {c['noise']:.0%} |"
        )
    if not changes:
        print("no cell with a speed-up against SDPA is in both runs")
    return 0
