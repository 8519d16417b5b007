"""What ``torch.compile`` buys: every cell timed eager and compiled, side by side in one run.

``python -m elfatt_lab.bench.compiled``: op-level cells (an attention layer on a ``side x side`` grid, as
``elfatt bench`` builds them) and model-level cells (whole backbones, ``timm:<name>`` for timm's own) are built
once, compiled with ``torch.compile`` (Inductor; Dynamo reset before each, so no cell hits the recompile limit and
falls back to eager), then the eager and the compiled module are timed in interleaved rounds (medians). Each row
gives both latencies, the speed-up (eager / compiled), the seconds the first compiled call took (compilation), and
the largest difference between the two outputs relative to the eager output's largest magnitude.

While compiling, ELFATT runs as the registered op ``elfatt::attention`` (:mod:`elfatt.ops.library`): the compiled
graph calls the eager kernels, and Inductor compiles what lies around them (linears, norms, MLPs).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from elfatt_lab._csv import publish_table
from elfatt_lab._progress import progress_bar
from elfatt_lab.bench.backbone_models import check_backbones
from elfatt_lab.bench.measure import time_round_robin
from elfatt_lab.bench.runner import DTYPES, BenchConfig, Cell, build_cell, cell_step

__all__ = ["main", "compile_cells"]


def compile_cells(args: argparse.Namespace) -> list[Cell]:
    """The op cells (mechanism x side x pass), then the model cells (backbone x resolution, forward)."""
    cells = [
        Cell("op", name, f"{side}x{side}", side * side, run_pass, (side, side), None)
        for side in args.sides
        for run_pass in args.passes
        for name in args.mechanisms
    ]
    for resolution in args.resolutions:
        grid = (resolution // 16, resolution // 16)
        label = f"{resolution}px"
        cells += [Cell("model", name, label, grid[0] * grid[1], "fwd", grid, resolution) for name in args.backbones]
    return cells


def _output(module: torch.nn.Module, inputs: tuple, autocast) -> torch.Tensor:
    with torch.inference_mode(), autocast():
        return module(*inputs).float()


def _measure(cell: Cell, config: BenchConfig, rounds: int, backend: str) -> dict:
    device = torch.device(config.device)
    dtype = DTYPES[config.dtype]

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if config.dtype != "fp32" else contextlib.nullcontext()

    module, inputs = build_cell(cell, config, device)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=backend)
    eager_step = cell_step(module, inputs, cell.run_pass, autocast)
    compiled_step = cell_step(compiled, inputs, cell.run_pass, autocast)
    start = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - start
    expected, got = _output(module, inputs, autocast), _output(compiled, inputs, autocast)
    difference = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
    medians = time_round_robin({"eager": eager_step, "compiled": compiled_step}, device, rounds)
    return dict(
        level=cell.level,
        mechanism=cell.mechanism,
        size=cell.size_label,
        tokens=cell.tokens,
        run_pass=cell.run_pass,
        eager_ms=medians["eager"],
        compiled_ms=medians["compiled"],
        compile_speedup=medians["eager"] / medians["compiled"],
        compile_s=compile_s,
        relative_difference=difference,
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from elfatt_lab.attention import MECHANISMS

    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.bench.compiled", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mechanisms", nargs="*", default=["sdpa", "elfatt"], help="op level: attention layers")
    parser.add_argument("--sides", nargs="+", type=int, default=[64, 128], help="op level: grid sides")
    parser.add_argument("--passes", nargs="+", default=["fwd"], choices=["fwd", "fwd+bwd"], help="op level")
    parser.add_argument(
        "--backbones",
        nargs="*",
        default=["swin_elfatt_tiny_hr", "timm:swin_tiny_patch4_window7_224"],
        help="model level: registered variants, timm:<name> for timm's, timm+elfatt:<vit> for timm's ViT patched",
    )
    parser.add_argument("--resolutions", nargs="*", type=int, default=[512], help="model level: image sides")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, medians over them (default 5)")
    parser.add_argument("--out", type=Path, help="folder for compiled.csv and compiled.md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    unknown = [name for name in args.mechanisms if name not in MECHANISMS]
    if unknown:
        parser.error(f"unknown mechanism {unknown[0]!r}; choose from {', '.join(MECHANISMS)}")
    try:
        check_backbones(tuple(args.backbones))
    except ValueError as error:
        parser.error(str(error))
    if args.rounds < 1 or args.batch < 1 or min(args.sides, default=1) < 1 or min(args.resolutions, default=16) < 16:
        parser.error("--rounds, --batch and --sides must be >= 1, --resolutions >= 16")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch sees no CUDA GPU")
    return args


def _table(rows: list[dict]) -> str:
    lines = [
        "| level | mechanism | size | pass | eager ms | compiled ms | speed-up | compile s | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['level']} | {row['mechanism']} | {row['size']} | {row['run_pass']} | {row['eager_ms']:.1f} | "
            f"{row['compiled_ms']:.1f} | {row['compile_speedup']:.2f}x | {row['compile_s']:.0f} | "
            f"{row['relative_difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every cell eager and compiled; print the table (and write it under ``--out``)."""
    args = _parse(argv)
    config = BenchConfig(dim=args.dim, heads=args.heads, batch=args.batch, device=args.device, dtype=args.dtype)
    config.validate()
    cells = compile_cells(args)
    rows = []
    with progress_bar(not args.no_progress, transient=True) as progress:
        task = None if progress is None else progress.add_task("eager vs compiled", total=len(cells))
        for cell in cells:
            rows.append(_measure(cell, config, args.rounds, args.backend))
            if progress is not None:
                progress.advance(task)
    caption = (
        f"torch {torch.__version__}, {args.device}, {args.dtype}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, torch.compile backend {args.backend}; "
        f"medians of {args.rounds} interleaved rounds; speed-up = eager / compiled."
    )
    publish_table(rows, caption, _table(rows), args.out, "compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
