"""``elfatt bench``: speed, memory and FLOPs of ELFATT against every peer, side by side in one run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from elfatt._arguments import OneLineErrorParser

__all__ = ["add_arguments", "run", "main"]

CPU_SIDES = (16, 32, 64, 96, 128)
GPU_SIDES = (32, 64, 128, 192, 256)
CPU_RESOLUTIONS = (224, 384, 512, 768)
GPU_RESOLUTIONS = (224, 384, 512, 768, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    from elfatt._arguments import device, finite_float, int_at_least, output_folder
    from elfatt.attention import MECHANISMS
    from elfatt.bench.runner import DEFAULT_BENCH_MECHANISMS

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
        default=20.0,
        help="skip a cell predicted to take longer (s), 0: never skip",
    )
    parser.add_argument("--out", type=output_folder, default=Path("bench-results"), help="output directory")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; returns the exit status."""
    from rich.console import Console

    from elfatt._progress import progress_bar
    from elfatt.bench.measure import memory_method
    from elfatt.bench.report import machine_info, print_tables, write_csv, write_json, write_markdown, write_plots
    from elfatt.bench.runner import BenchConfig, add_ratios, iterate, plan_cells

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
    console.print(
        f"[bold]elfatt bench[/] on {machine['gpu'] or machine['cpu']} ({machine['torch_threads']} threads), "
        f"torch {machine['torch']}, {config.dtype}{', compiled' if config.compile else ''}"
    )
    rows = []
    with progress_bar(console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(plan_cells(config)))
        for cell, row in iterate(config):
            rows.append(row)
            progress.update(
                task, advance=1, description=f"{cell.level} {cell.size_label} {cell.run_pass} {cell.mechanism}"
            )
    add_ratios(rows)
    print_tables(rows, console)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "results.csv")
    write_json(rows, config, machine, memory_method(torch.device(config.device)), args.out / "results.json")
    write_markdown(rows, machine, args.out / "summary.md")
    plots = write_plots(rows, machine, args.out)
    console.print(f"memory: {memory_method(torch.device(config.device))}")
    written = [args.out / name for name in ("results.csv", "results.json", "summary.md")] + plots
    console.print("wrote " + ", ".join(map(str, written)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m elfatt.bench``."""
    parser = OneLineErrorParser(prog="elfatt bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
