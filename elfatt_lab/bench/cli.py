"""``elfatt bench``: speed, memory and FLOPs of ELFATT against every peer, side by side in one run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from elfatt_lab._arguments import OneLineErrorParser

__all__ = ["add_arguments", "run", "main"]

CPU_SIDES = (16, 32, 64, 96, 128)
GPU_SIDES = (32, 64, 128, 192, 256)
CPU_RESOLUTIONS = (224, 384, 512, 768)
GPU_RESOLUTIONS = (224, 384, 512, 768, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    from elfatt_lab._arguments import device, finite_float, int_at_least, output_folder
    from elfatt_lab.attention import MECHANISMS
    from elfatt_lab.bench.runner import DEFAULT_BENCH_MECHANISMS

    positive = int_at_least(1)

    parser.add_argument("--levels", nargs="+", default=["op", "model"], choices=["op", "model"])
    parser.add_argument(
        "--mechanisms",
        nargs="+",
        default=list(DEFAULT_BENCH_MECHANISMS),
        metavar="NAME",
        help=f"any of: {', '.join(MECHANISMS)}",
    )
    parser.add_argument(
        "--backbones",
        nargs="*",
        metavar="NAME",
        help="model level: whole backbones too (default: swin_elfatt_tiny_224, swin_elfatt_tiny_hr, "
        "cswin_elfatt_tiny_224, timm:swin_tiny_patch4_window7_224 timm:vit_small_patch16_224 where timm imports)",
    )
    parser.add_argument("--sides", nargs="+", type=positive, help="op level: grid sides (default by device)")
    parser.add_argument("--resolutions", nargs="+", type=positive, help="model level: image sides, multiples of 16")
    parser.add_argument("--dim", type=positive, default=128, help="op level: channels")
    parser.add_argument("--heads", type=positive, default=4, help="op level: heads")
    parser.add_argument("--layout", default="vit_small", help="model level: vit_micro, vit_tiny, vit_small, vit_base")
    parser.add_argument("--batch", type=positive, default=1)
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="fp32", help="fp32, or bf16/fp16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile every module")
    parser.add_argument("--warmup", type=int_at_least(0), default=1)
    parser.add_argument("--repeats", type=positive, default=5, help="timed calls per cell (median reported)")
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], help="op level: fwd and/or fwd+bwd")
    parser.add_argument("--model-passes", nargs="+", default=["fwd"], help="model level: fwd and/or fwd+bwd")
    parser.add_argument(
        "--cell-budget",
        type=finite_float(0.0),
        default=10.0,
        help="skip a cell predicted to take longer (s), 0: never skip",
    )
    parser.add_argument("--out", type=output_folder, default=Path("bench-results"), help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue a partial run in --out (same options)")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="compare two runs' folders instead of running"
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; returns the exit status."""
    from rich.console import Console

    from elfatt_lab._atomic import atomic_write_text
    from elfatt_lab._progress import progress_bar
    from elfatt_lab.bench.measure import memory_method
    from elfatt_lab.bench.report import machine_info, print_tables, write_csv, write_json, write_markdown, write_plots
    from elfatt_lab.bench.runner import BenchConfig, add_ratios, cell_key, iterate, plan_cells

    if args.compare:
        from elfatt_lab.bench.compare import compare_runs

        return compare_runs(*args.compare)

    on_gpu = args.device.startswith("cuda")
    config = BenchConfig(
        levels=tuple(args.levels),
        mechanisms=tuple(args.mechanisms),
        **({} if args.backbones is None else {"backbones": tuple(args.backbones)}),
        sides=tuple(args.sides or (GPU_SIDES if on_gpu else CPU_SIDES)),
        resolutions=tuple(args.resolutions or (GPU_RESOLUTIONS if on_gpu else CPU_RESOLUTIONS)),
        dim=args.dim,
        heads=args.heads,
        layout=args.layout,
        batch=args.batch,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        warmup=args.warmup,
        repeats=args.repeats,
        passes=tuple(args.passes),
        model_passes=tuple(args.model_passes),
        cell_budget_s=args.cell_budget,
    )
    try:
        config.validate()
        import torch

        torch.device(config.device)
    except (ValueError, RuntimeError) as error:
        print(f"elfatt bench: error: {error}", file=sys.stderr)
        return 2
    console = Console()
    if console.width < 150:
        console = Console(width=150)
    machine = machine_info(config.device)
    try:
        earlier = _earlier_rows(args.out, config) if args.resume else []
    except ValueError as error:
        print(f"elfatt bench: error: {error}", file=sys.stderr)
        return 2
    atomic_write_text(json.dumps(dict(config=asdict(config)), indent=2, default=str) + "\n", args.out / "run.json")
    console.print(
        f"[bold]elfatt bench[/] on {machine['gpu'] or machine['cpu']} ({machine['torch_threads']} threads), "
        f"torch {machine['torch']}, {config.dtype}{', compiled' if config.compile else ''}"
    )
    rows = list(earlier)
    done = frozenset(cell_key(row.level, row.mechanism, row.size, row.run_pass) for row in earlier)
    interrupted = False
    busy: list[str] = []
    try:
        with progress_bar(console=console, transient=True) as progress:
            task = progress.add_task("starting", total=len(plan_cells(config)), completed=len(done))
            for group in iterate(config, done):
                busy += other_busy_processes()
                rows.extend(group)
                write_csv(rows, args.out / "results.csv")
                first = group[0]
                progress.update(task, advance=len(group), description=f"{first.level} {first.size} {first.run_pass}")
    except KeyboardInterrupt:
        interrupted = True
    if not rows:
        console.print("interrupted before any cell was measured; nothing written")
        return 130
    add_ratios(rows)
    print_tables(rows, console)
    write_csv(rows, args.out / "results.csv")
    write_json(rows, config, machine, memory_method(torch.device(config.device)), args.out / "results.json")
    write_markdown(rows, machine, args.out / "summary.md")
    plots = write_plots(rows, machine, args.out)
    console.print(f"memory: {memory_method(torch.device(config.device))}")
    written = [args.out / name for name in ("results.csv", "results.json", "summary.md")] + plots
    console.print("wrote " + ", ".join(map(str, written)))
    load = load_note(busy)
    if load:
        console.print(load)
    if interrupted:
        console.print(f"interrupted: kept {len(rows)} cells; `elfatt bench --resume` with the same options continues")
        return 130
    return 0


def _earlier_rows(out: Path, config: object) -> list:
    """The rows of a partial run in ``out`` to continue, checked to be of the same options."""
    from elfatt_lab.bench.report import read_rows

    record, results = out / "run.json", out / "results.csv"
    if not record.is_file() or not results.is_file():
        raise ValueError(f"--resume: {out} holds no partial run (run.json and results.csv)")
    saved = json.loads(record.read_text()).get("config")
    asked = json.loads(json.dumps(asdict(config), default=str))
    if saved != asked:
        changed = sorted(key for key in asked if saved is None or saved.get(key) != asked[key])
        raise ValueError(f"--resume: {out} was run with other options ({', '.join(changed)}); pass the same ones")
    return read_rows(results)


def other_busy_processes() -> list[str]:
    """Names of the other processes running on a CPU right now (state R in ``/proc/<pid>/stat``); empty where
    ``/proc`` is not there."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        name, _, fields = rest.rpartition(") ")
        if int(pid) != os.getpid() and fields.startswith("R"):
            names.append(name.lstrip("("))
    return names


def load_note(busy: list[str]) -> str | None:
    """One line on the machine's load when other processes ran during the run (``busy``: their names as seen
    after each group) or the load average was above the cores, else None."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    cores = os.cpu_count() or 1
    if not busy and load <= cores + 0.5:
        return None
    others = ", ".join(sorted(set(busy))) or "none seen"
    return (
        f"note: the machine was busy (load average {load:.1f} on {cores} cores at the end; other running processes: "
        f"{others}): cells marked ~ were unsteady; compare ratios, or run again on a quiet machine"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m elfatt_lab.bench``."""
    parser = OneLineErrorParser(prog="elfatt bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
