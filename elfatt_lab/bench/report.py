"""Benchmark output: a table in the terminal, and CSV, JSON (with the machine) and PNG plots in the output dir."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from elfatt_lab._atomic import atomic_save_figure, atomic_write_text
from elfatt_lab._csv import write_rows
from elfatt_lab.bench.runner import BenchConfig, Row

__all__ = ["machine_info", "rows_table", "print_tables", "write_csv", "write_json", "write_markdown", "write_plots"]


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    """What the results were measured on, so runs on different machines are comparable."""
    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "cuda": torch.version.cuda,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows_table(rows: Sequence[Row], level: str, run_pass: str) -> Table:
    """A rich table of one level and pass: a line per mechanism and size, speedups against vanilla and SDPA."""
    unit = "img/s" if level == "model" else "Mtok/s"
    table = Table(title=f"{level} level, {run_pass}", title_justify="left", header_style="bold")
    for column in (
        "size",
        "tokens",
        "mechanism",
        "median ms",
        "p25-p75 ms",
        "spread",
        unit,
        "peak MiB",
        "GFLOPs",
        "x vs vanilla",
        "x vs SDPA",
    ):
        table.add_column(column, justify="left" if column in ("size", "mechanism") else "right")
    selected = [row for row in rows if row.level == level and row.run_pass == run_pass]
    for index, row in enumerate(selected):
        end_section = index + 1 == len(selected) or selected[index + 1].size != row.size
        if row.status != "ok":
            table.add_row(row.size, str(row.tokens), row.mechanism, row.status, end_section=end_section)
            continue
        throughput = row.throughput / 1e6 if level == "op" and row.throughput else row.throughput
        style = "bold green" if row.mechanism.startswith("elfatt") else None
        table.add_row(
            row.size,
            str(row.tokens),
            row.mechanism,
            _fmt(row.median_ms, ".2f") + _unstable_mark(row),
            f"{_fmt(row.p25_ms, '.1f')}-{_fmt(row.p75_ms, '.1f')}",
            "-" if row.spread is None else f"{row.spread:.0%}",
            _fmt(throughput, ".2f"),
            _fmt(row.peak_mib, ".1f"),
            _fmt(row.gflops, ".2f"),
            _fmt(row.speedup_vs_vanilla, ".2f"),
            _fmt(row.speedup_vs_sdpa, ".2f"),
            style=style,
            end_section=end_section,
        )
    return table


UNSTABLE_NOTE = "`~`: unstable, spread (IQR / median) above 10% after a second measurement"


def _unstable_mark(row: Row) -> str:
    return "~" if row.stable is False else ""


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``results.csv`` written by :func:`write_csv`, with their types back."""
    names = {field.name: field.type for field in fields(Row)}
    rows = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            values = {}
            for name, text in record.items():
                if name not in names:
                    continue
                kind = str(names[name])
                if text == "":
                    values[name] = None if "None" in kind else text
                elif kind.startswith("int"):
                    values[name] = int(text)
                elif kind.startswith("float"):
                    values[name] = float(text)
                elif kind.startswith("bool"):
                    values[name] = text == "True"
                else:
                    values[name] = text
            rows.append(Row(**values))
    return rows


def print_tables(rows: Sequence[Row], console: Console) -> None:
    """Print one table per (level, pass) present in ``rows``."""
    seen = []
    for row in rows:
        if (row.level, row.run_pass) not in seen:
            seen.append((row.level, row.run_pass))
    for level, run_pass in seen:
        console.print(rows_table(rows, level, run_pass))
    if any(row.stable is False for row in rows):
        console.print(UNSTABLE_NOTE)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """Every row with every field, one line per cell."""
    write_rows([row.as_dict() for row in rows], path)


def write_json(rows: Sequence[Row], config: BenchConfig, machine: dict, memory: str, path: Path) -> None:
    """The machine, the configuration, how memory was measured, and the rows."""
    payload = {
        "machine": machine,
        "config": asdict(config),
        "memory_method": memory,
        "rows": [r.as_dict() for r in rows],
    }
    atomic_write_text(json.dumps(payload, indent=2), path)


def write_markdown(rows: Sequence[Row], machine: dict, path: Path) -> None:
    """Per level and pass, a mechanism x size table of median ms with the speedup against SDPA and vanilla."""
    where = machine["gpu"] or f"{machine['cpu']}, {machine['torch_threads']} threads"
    lines = [f"Measured on {where}, torch {machine['torch']}, {machine['date']}.", ""]
    for level, run_pass in dict.fromkeys((row.level, row.run_pass) for row in rows):
        selected = [row for row in rows if row.level == level and row.run_pass == run_pass]
        sizes = list(dict.fromkeys(row.size for row in selected))
        lines += [f"**{level} level, {run_pass}**: median ms (speedup vs SDPA / vs vanilla); {UNSTABLE_NOTE}", ""]
        lines += ["| mechanism | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        for mechanism in dict.fromkeys(row.mechanism for row in selected):
            cells = []
            for size in sizes:
                row = next((r for r in selected if r.mechanism == mechanism and r.size == size), None)
                if row is None or row.median_ms is None:
                    cells.append("-" if row is None else row.status)
                    continue
                speedups = f"{_fmt(row.speedup_vs_sdpa, '.2f')} / {_fmt(row.speedup_vs_vanilla, '.2f')}"
                cells.append(f"{row.median_ms:.1f}{_unstable_mark(row)} ({speedups})")
            name = f"**{mechanism}**" if mechanism.startswith("elfatt") else mechanism
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    atomic_write_text("\n".join(lines), path)


def _x_value(row: Row) -> int:
    """Tokens at op level; the image side at model level, where backbones differ in tokens per pixel."""
    return row.tokens if row.level == "op" else int(row.size.removesuffix("px"))


def write_plots(rows: Sequence[Row], machine: dict, out_dir: Path) -> list[Path]:
    """Per level, latency and peak memory against tokens, log-log, a line per mechanism and pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    where = machine["gpu"] or machine["cpu"]
    for level in ("op", "model"):
        level_rows = [row for row in rows if row.level == level and row.status == "ok"]
        if not level_rows:
            continue
        passes = list(dict.fromkeys(row.run_pass for row in level_rows))
        mechanisms = list(dict.fromkeys(row.mechanism for row in level_rows))
        colours = plt.get_cmap("tab20")(range(len(mechanisms)))
        figure, axes = plt.subplots(len(passes), 2, figsize=(12, 4.5 * len(passes)), squeeze=False)
        for (latency_ax, memory_ax), run_pass in zip(axes, passes, strict=True):
            for mechanism, colour in zip(mechanisms, colours, strict=True):
                points = [r for r in level_rows if r.mechanism == mechanism and r.run_pass == run_pass]
                if not points:
                    continue
                ours = mechanism.startswith("elfatt") or "_elfatt_" in mechanism
                style = dict(color=colour, marker="o" if ours else ".", linewidth=2.5 if ours else 1.2, label=mechanism)
                xs = [_x_value(r) for r in points]
                latency_ax.plot(xs, [r.median_ms for r in points], **style)
                unstable = [(_x_value(r), r.median_ms) for r in points if r.stable is False and r.median_ms]
                if unstable:
                    latency_ax.scatter(*zip(*unstable, strict=True), s=120, facecolors="none", edgecolors="red")
                memory = [(_x_value(r), r.peak_mib) for r in points if r.peak_mib]
                if memory:
                    memory_ax.plot(*zip(*memory, strict=True), **style)
            for ax, what in ((latency_ax, "median latency (ms)"), (memory_ax, "peak memory (MiB)")):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("tokens" if level == "op" else "image side (px)")
                ax.set_ylabel(what)
                ax.set_title(f"{level} level, {run_pass}")
                ax.grid(True, which="both", alpha=0.3)
            latency_ax.legend(fontsize=8, title="red ring: unstable (spread > 10%)", title_fontsize=7)
        figure.suptitle(f"elfatt bench: {level} level on {where}, torch {machine['torch']}", fontsize=11)
        figure.tight_layout()
        path = out_dir / f"{level}_level.png"
        atomic_save_figure(figure, path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
