"""The ELFATT layer against timm's ``Attention`` and against its own two linears, side by side in one run.

``python -m elfatt_lab.bench.layer``. At each grid, pass and thread count, three calls are timed in interleaved
rounds (every call once per round, in turn, so that a noisy machine slows them alike; medians over rounds, with
the spread IQR / median of each):

- ``elfatt``: ``ELFATTAttention(dim, heads, qkv_bias=True)`` on the grid;
- ``timm``: timm's ``Attention(dim, heads, qkv_bias=True)``, the layer ELFATT replaces;
- ``linears``: the layer's own ``qkv`` and ``proj`` linears alone, the floor any attention layer of this width
  stands on.

With ``--compile``, both layers are also compiled (``torch.compile``, Inductor, Dynamo reset per grid) and timed in
the same rounds. Each row also gives the aten ops of one forward (torch.profiler: all of them, and those that
compute or copy, :mod:`elfatt_lab.bench.op_count`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from elfatt.modules import ELFATTAttention
from elfatt_lab._csv import publish_table
from elfatt_lab._progress import progress_bar
from elfatt_lab.bench.measure import round_robin_timings
from elfatt_lab.bench.op_count import count_ops

__all__ = ["main", "DEFAULT_GRIDS", "layer_row"]

# (height, width, batch): a ViT-S layer at 224 px, then growing grids
DEFAULT_GRIDS = ((14, 14, 8), (16, 16, 8), (32, 32, 2), (64, 64, 1), (128, 128, 1))


class _Linears(nn.Module):
    """The qkv and proj linears of ``layer`` alone."""

    def __init__(self, layer: ELFATTAttention) -> None:
        super().__init__()
        self.qkv, self.proj = layer.qkv, layer.proj

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.proj(self.qkv(x)[..., : x.shape[-1]])


class _Timm(nn.Module):
    """timm's ``Attention`` with the grid argument the ELFATT layer takes (and ignores)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        from timm.layers import Attention

        self.attn = Attention(dim, heads, qkv_bias=True)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.attn(x)


def _step(module: Callable[..., torch.Tensor], x: torch.Tensor, size: tuple[int, int], run_pass: str) -> Callable:
    if run_pass == "fwd":

        def forward() -> None:
            with torch.no_grad():
                module(x, size)

        return forward
    leaf = x.detach().requires_grad_()

    def forward_backward() -> None:
        module(leaf, size).sum().backward()

    return forward_backward


def _compiled(module: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> tuple[Callable, float]:
    """``module`` compiled, and the seconds its first call took."""
    compiled = torch.compile(module)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x, size)
    return compiled, time.perf_counter() - start


def layer_row(
    modules: dict[str, nn.Module], grid: tuple[int, int, int], run_pass: str, rounds: int, compile_layers: bool
) -> dict:
    """One row of the table: the modules timed side by side on one grid and pass, at the current thread count."""
    height, width, batch = grid
    size = (height, width)
    x = torch.randn(batch, height * width, modules["elfatt"].dim)
    calls = dict(modules)
    row: dict = dict(grid=f"{height}x{width}", batch=batch, threads=torch.get_num_threads(), run_pass=run_pass)
    if compile_layers:
        torch._dynamo.reset()
        for name in ("elfatt", "timm"):
            calls[f"{name} compiled"], row[f"{name} compile s"] = _compiled(modules[name], x, size)
    timings = round_robin_timings(
        {name: _step(module, x, size, run_pass) for name, module in calls.items()}, torch.device("cpu"), rounds
    )
    for name, timing in timings.items():
        row[f"{name} ms"] = timing.median_ms
        row[f"{name} spread"] = (timing.p75_ms - timing.p25_ms) / timing.median_ms
    row["elfatt / linears"] = row["elfatt ms"] / row["linears ms"]
    row["speed-up vs timm"] = row["timm ms"] / row["elfatt ms"]
    if compile_layers:
        row["compiled / eager speed"] = row["elfatt ms"] / row["elfatt compiled ms"]
        row["speed-up vs compiled timm"] = row["timm compiled ms"] / row["elfatt compiled ms"]
    with torch.no_grad():
        for name in ("elfatt", "timm"):
            ops = count_ops(lambda name=name: modules[name](x, size))
            row[f"{name} ops"], row[f"{name} compute ops"] = ops.total, ops.compute
    return row


def _grid(text: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"(\d+)x(\d+):(\d+)", text)
    if match is None or min(int(g) for g in match.groups()) < 1:
        raise argparse.ArgumentTypeError(f"a grid is HxW:BATCH with sides and batch >= 1, e.g. 14x14:8; got {text!r}")
    height, width, batch = (int(g) for g in match.groups())
    return height, width, batch


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.bench.layer", description=__doc__.split("\n\n")[0])
    default_grids = " ".join(f"{h}x{w}:{b}" for h, w, b in DEFAULT_GRIDS)
    parser.add_argument("--grids", type=_grid, nargs="+", default=list(DEFAULT_GRIDS), help=f"default {default_grids}")
    parser.add_argument("--dim", type=int, default=384, help="channels (default 384, ViT-S)")
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--passes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--compile", action="store_true", help="also time both layers compiled (Inductor)")
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds; medians over them (default 15)")
    parser.add_argument("--out", type=Path, help="folder for layer.csv and layer.md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("dim", "heads", "block", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    if args.dim % args.heads or args.heads < 2:
        parser.error("--dim must divide by --heads, and the layer needs at least 2 heads (global and block)")
    return args


def _table(rows: list[dict], compiled: bool) -> str:
    columns = ["threads", "grid", "batch", "pass", "ELFATT ms", "timm ms", "linears ms", "ELFATT / linears",
               "speed-up vs timm"]  # fmt: skip
    if compiled:
        columns += ["ELFATT compiled ms", "compiled / eager speed", "timm compiled ms", "speed-up vs compiled timm"]
    columns += ["ops (compute)", "timm ops (compute)", "worst spread"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [row["threads"], row["grid"], row["batch"], row["run_pass"], f"{row['elfatt ms']:.2f}",
                 f"{row['timm ms']:.2f}", f"{row['linears ms']:.2f}", f"{row['elfatt / linears']:.2f}x",
                 f"{row['speed-up vs timm']:.2f}x"]  # fmt: skip
        if compiled:
            cells += [f"{row['elfatt compiled ms']:.2f}", f"{row['compiled / eager speed']:.2f}x",
                      f"{row['timm compiled ms']:.2f}", f"{row['speed-up vs compiled timm']:.2f}x"]  # fmt: skip
        spread = max(value for key, value in row.items() if key.endswith("spread"))
        cells += [f"{row['elfatt ops']} ({row['elfatt compute ops']})",
                  f"{row['timm ops']} ({row['timm compute ops']})", f"{spread:.0%}"]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; print the table (and write it under ``--out``)."""
    args = _parse(argv)
    torch.manual_seed(0)
    layer = ELFATTAttention(args.dim, args.heads, block=args.block, qkv_bias=True)
    modules = {"elfatt": layer, "timm": _Timm(args.dim, args.heads), "linears": _Linears(layer)}
    cells = [(threads, grid, run_pass) for threads in args.threads for grid in args.grids for run_pass in args.passes]
    threads_before = torch.get_num_threads()
    rows = []
    try:
        with progress_bar(not args.no_progress, transient=True) as progress:
            task = None if progress is None else progress.add_task("layer bench", total=len(cells))
            for threads, grid, run_pass in cells:
                torch.set_num_threads(threads)
                rows.append(layer_row(modules, grid, run_pass, args.rounds, args.compile))
                if progress is not None:
                    progress.advance(task)
    finally:
        torch.set_num_threads(threads_before)
    caption = (
        f"ELFATTAttention({args.dim}, {args.heads}, block={args.block}, qkv_bias=True) against timm's "
        f"Attention({args.dim}, {args.heads}, qkv_bias=True) and the layer's own qkv + proj linears; fp32, medians of "
        f"{args.rounds} interleaved rounds; ops: aten ops of one forward (those that compute or copy in brackets); "
        "worst spread: the largest IQR / median of the row's cells."
    )
    publish_table(rows, caption, _table(rows, args.compile), args.out, "layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
