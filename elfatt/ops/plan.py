"""The plan of one grid: where each block's tokens are gathered from and scattered back to, made once per
(batch, grid, block, device, dtype) and cached, so a call issues the same few kernels whatever the grid.

Blocks are gathered from the ``[B * (P + H * W), heads, d]`` tokens by one ``index_select`` into chunks of equal
blocks, attended by one SDPA call per chunk, and put back in grid order by one more ``index_select``. Two layouts:

- **padded** (one chunk): the grid padded to whole blocks, positions past its edge read a copy of a grid token and
  are masked out as keys (an additive bias of ``-inf``) and zeroed for LePE. Where the block divides the grid
  nothing is padded and no mask is passed. One SDPA call whatever the grid: what the CPU wants, where each call
  costs about twenty dispatches and its flash kernel takes a mask at no extra cost.
- **regions** (up to four chunks): whole blocks, the right edge, the bottom edge and the corner, each chunk its
  blocks at their own exact size and never a mask, so FlashAttention runs every call: what CUDA wants.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from elfatt.ops.blocks import ceil_div

__all__ = ["Chunk", "Plan", "plan_for"]


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of the gathered tokens: ``count`` blocks (all batches) of ``bh x bw`` tokens."""

    start: int
    stop: int
    count: int
    bh: int
    bw: int


@dataclass(frozen=True)
class Plan:
    """Index tensors and chunks of one grid; see the module docstring."""

    gather: Tensor  # [rows], source row of every gathered position
    scatter: Tensor  # [B * H * W], gathered row of every grid token, batch-major, row-major
    source_rows: Tensor | None  # [B * H * W], source row of every grid token; None where they are all the rows
    grid_of_row: Tensor | None  # [rows], grid token of every gathered row; None where some lie past the grid
    chunks: tuple[Chunk, ...]
    key_bias: Tensor | None  # [blocks, 1, 1, bh * bw]: 0 for a key on the grid, -inf past it (padded layout)
    on_grid: Tensor | None  # [rows, 1, 1]: 1 on the grid, 0 past it (padded layout)


def _bands(length: int, block: int, padded: bool) -> list[tuple[int, int, int]]:
    """``(start, stop, block)`` bands along one side: one band of whole (padded) blocks, or whole then remainder."""
    whole = length - length % block
    if padded or not length % block:
        return [(0, ceil_div(length, block) * block, block)]
    return ([(0, whole, block)] if whole else []) + [(whole, length, length % block)]


@functools.lru_cache(maxsize=256)
@torch.inference_mode(False)
def plan_for(
    batch: int,
    tokens: int,
    prefix: int,
    size: tuple[int, int],
    block: tuple[int, int],
    padded: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Plan:
    """The plan for ``batch`` sequences of ``tokens = prefix + H * W`` tokens cut into ``block = (bh, bw)`` blocks.

    ``padded`` picks the layout (see the module docstring); a block that divides the grid gives the same plan
    either way. Indices are built with ``arange`` on the CPU and moved to ``device`` once, as normal tensors even
    when first asked for under inference mode, so that a training pass can save them.
    """
    height, width = size
    # built on the CPU whatever the default device (a model made under torch.device("meta") included)
    cpu = torch.device("cpu")
    sources, chunks, starts = [], [], 0
    batch_offset = torch.arange(batch, device=cpu)[:, None, None] * tokens + prefix
    for row_start, row_stop, bh in _bands(height, block[0], padded):
        for col_start, col_stop, bw in _bands(width, block[1], padded):
            nh, nw = (row_stop - row_start) // bh, (col_stop - col_start) // bw
            position = torch.arange(bh * bw, device=cpu)
            block_index = torch.arange(nh * nw, device=cpu)[:, None]
            rows = row_start + block_index // nw * bh + position // bw
            cols = col_start + block_index % nw * bw + position % bw
            # [B, blocks, bh * bw]; a position past the grid reads its nearest grid token (masked out below)
            grid = rows.clamp(max=height - 1) * width + cols.clamp(max=width - 1)
            valid = ((rows < height) & (cols < width)).expand(batch, -1, -1)
            sources.append((batch_offset + grid, valid))
            count = batch * nh * nw
            chunks.append(Chunk(starts, starts + count * bh * bw, count, bh, bw))
            starts += count * bh * bw
    gather = torch.cat([source.flatten() for source, _ in sources])
    valid = torch.cat([mask.flatten() for _, mask in sources])
    grid_row = (gather // tokens) * (height * width) + gather % tokens - prefix
    scatter = torch.empty(batch * height * width, dtype=torch.long, device=cpu)
    scatter[grid_row[valid]] = torch.arange(gather.numel(), device=cpu)[valid]
    source_rows = torch.arange(batch, device=cpu)[:, None] * tokens + prefix + torch.arange(height * width, device=cpu)
    source_rows = source_rows.flatten().to(device) if prefix else None
    key_bias = on_grid = grid_of_row = None
    if bool(valid.all()):
        grid_of_row = grid_row.to(device)
    else:
        chunk = chunks[0]
        key_bias = torch.zeros(valid.shape, dtype=dtype, device=cpu).masked_fill(~valid, float("-inf"))
        key_bias = key_bias.view(chunk.count, 1, 1, chunk.bh * chunk.bw).to(device)
        on_grid = valid.to(dtype).view(-1, 1, 1).to(device)
    return Plan(gather.to(device), scatter.to(device), source_rows, grid_of_row, tuple(chunks), key_bias, on_grid)
