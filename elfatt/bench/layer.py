"""The ELFATT layer against the sum of its parts: how much of its time is glue (layout copies, adds).

``python -m elfatt.bench.layer``. One ``ELFATTAttention`` forward is timed beside each of its parts called alone on
inputs already in the layout that part likes best:

- ``qkv`` and ``proj``: the two linears;
- ``global part``: :func:`~elfatt.functional.global_linear_attention` on contiguous ``[B, heads_g, N, d]``;
- ``block part``: :func:`~elfatt.functional.block_attention` on contiguous ``[B, heads_b, N, d]`` (its own cut
  into blocks and putting back included: that is the op);
- ``global LePE`` / ``block LePE``: the depthwise convs alone on dense channels-last images (the whole grid; the
  blocks), their fastest form on CPU.

and, for the before and after, the same layer through :func:`~elfatt.functional.elfatt` on head-major tensors
(qkv permuted to ``[B, heads, N, d]`` and back, what the layer did before :mod:`elfatt.tokens_last`). Every round
times every callable once, in turn, so that a noisy machine slows them alike; the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from elfatt._csv import publish_table
from elfatt._progress import progress_bar
from elfatt.bench.measure import time_round_robin
from elfatt.functional import block_attention, elfatt, global_linear_attention
from elfatt.modules import ELFATTAttention
from elfatt.tokens_last import lepe_channels_last

__all__ = ["main", "layer_callables"]

PARTS = ("qkv", "global part", "global LePE", "block part", "block LePE", "proj")


def _head_major_layer(layer: ELFATTAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    batch, tokens, _ = x.shape
    q, k, v = layer.qkv(x).reshape(batch, tokens, 3, layer.num_heads, layer.head_dim).permute(2, 0, 3, 1, 4)
    out = elfatt(
        q,
        k,
        v,
        size,
        block=layer.block_size(size),
        split=layer.num_global_heads / layer.num_heads,
        global_lepe=(layer.global_lepe.conv.weight, layer.global_lepe.conv.bias),
        block_lepe=(layer.block_lepe.conv.weight, layer.block_lepe.conv.bias),
    )
    return layer.proj(out.transpose(1, 2).reshape(batch, tokens, layer.dim))


def layer_callables(
    layer: ELFATTAttention, size: tuple[int, int], batch: int = 1
) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument calls of the layer, of its head-major form and of each part, on fresh random inputs.

    The layer needs both groups of heads (``0 < split < 1``) and both LePEs.
    """
    if layer.global_lepe is None or layer.block_lepe is None:
        raise ValueError("the layer bench needs global and block heads (0 < split < 1)")
    height, width = size
    tokens, dim, head_dim = height * width, layer.dim, layer.head_dim
    global_heads = layer.num_global_heads
    block_heads = layer.num_heads - global_heads
    bh, bw = layer.block_size(size)
    num_blocks = -(-height // bh) * -(-width // bw)
    x = torch.randn(batch, tokens, dim)
    q_g, k_g, v_g = (torch.randn(batch, global_heads, tokens, head_dim) for _ in "qkv")
    q_b, k_b, v_b = (torch.randn(batch, block_heads, tokens, head_dim) for _ in "qkv")
    grid_image = torch.randn(batch, height, width, global_heads * head_dim)
    block_images = torch.randn(batch * num_blocks, bh, bw, block_heads * head_dim)
    global_conv, block_conv = layer.global_lepe.conv, layer.block_lepe.conv
    return {
        "layer": lambda: layer(x, size),
        "head-major layer": lambda: _head_major_layer(layer, x, size),
        "qkv": lambda: layer.qkv(x),
        "global part": lambda: global_linear_attention(q_g, k_g, v_g),
        "global LePE": lambda: lepe_channels_last(grid_image, global_conv.weight, global_conv.bias),
        "block part": lambda: block_attention(q_b, k_b, v_b, size, (bh, bw)),
        "block LePE": lambda: lepe_channels_last(block_images, block_conv.weight, block_conv.bias),
        "proj": lambda: layer.proj(x),
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m elfatt.bench.layer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128], help="grid sides (default 64 128)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=21, help="timing rounds; medians over them (default 21)")
    parser.add_argument("--out", type=Path, help="folder for layer_parts.csv and layer_parts.md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("dim", "heads", "block", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.sides) < 1:
        parser.error("--sides must be >= 1")
    if args.dim % args.heads or args.heads < 2:
        parser.error("--dim must divide by --heads, and the layer needs at least 2 heads (global and block)")
    return args


def _table(rows: list[dict]) -> str:
    lines = [
        "| grid | layer ms | sum of parts ms | layer / parts | head-major layer ms | speed-up | "
        + " | ".join(f"{part} ms" for part in PARTS)
        + " |",
        "|---" * (6 + len(PARTS)) + "|",
    ]
    for row in rows:
        parts = " | ".join(f"{row[part]:.2f}" for part in PARTS)
        lines.append(
            f"| {row['grid']} | {row['layer']:.2f} | {row['sum of parts']:.2f} | {row['layer / parts']:.2f} | "
            f"{row['head-major layer']:.2f} | {row['speed-up']:.2f}x | {parts} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; print the table (and write it under ``--out``)."""
    args = _parse(argv)
    torch.manual_seed(0)
    layer = ELFATTAttention(args.dim, args.heads, block=args.block).eval()
    rows = []
    with progress_bar(not args.no_progress, transient=True) as progress:
        task = None if progress is None else progress.add_task("layer vs parts", total=len(args.sides) * args.rounds)
        advance = None if progress is None else lambda: progress.advance(task)
        for side in args.sides:
            calls = layer_callables(layer, (side, side), args.batch)
            with torch.inference_mode():
                medians = time_round_robin(calls, torch.device("cpu"), args.rounds, advance)
            total = sum(medians[part] for part in PARTS)
            rows.append(
                dict(
                    grid=f"{side}x{side}",
                    **medians,
                    **{"sum of parts": total, "layer / parts": medians["layer"] / total},
                    **{"speed-up": medians["head-major layer"] / medians["layer"]},
                )
            )
    threads = torch.get_num_threads()
    caption = (
        f"ELFATTAttention(dim={args.dim}, heads={args.heads}, block={args.block}), batch {args.batch}, fp32 forward, "
        f"{threads} threads, medians of {args.rounds} interleaved rounds; speed-up: head-major layer / layer."
    )
    publish_table(rows, caption, _table(rows), args.out, "layer_parts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
