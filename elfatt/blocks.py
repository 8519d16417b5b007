"""Cutting a token grid into blocks (windows or stripes) and putting it back.

A block is ``(bh, bw)`` tokens. A side given as ``None`` spans the whole grid side, so ``(2, None)`` is a
horizontal stripe of height 2 and ``(None, 2)`` a vertical one. A side larger than the grid is clipped to
it, so a block never holds more rows or columns than the grid has.

Grid sides may be ``torch.SymInt`` (``torch.compile`` with dynamic shapes, ``torch.export``). There nothing
branches on a side: blocks are gathered by index from the grid, positions past its edge zeroed and masked as
keys (:func:`padded_blocks`), one graph that is right at every size. Eager code keeps the mask-free form, edge
blocks attended at their own size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt._checks import check_size, check_tokens

__all__ = [
    "BlockSpec",
    "BlockCount",
    "resolve_block",
    "block_layout",
    "block_from_count",
    "blockify",
    "unblockify",
    "padded_blocks",
    "ceil_div",
]


class BlockCount(NamedTuple):
    """A block spec by count: the grid cut into ``rows x cols`` blocks of ``ceil(H / rows) x ceil(W / cols)``,
    the paper's "b blocks of m/b tokens", whose size follows the grid (see :func:`block_from_count`)."""

    rows: int
    cols: int


BlockSpec = int | tuple[int | None, int | None] | BlockCount


def padded_blocks() -> bool:
    """Whether the block ops take their branch-free form (whole blocks gathered, keys past the grid masked)
    rather than the eager one (edge blocks at their own size, no mask): while ``torch.export`` or
    ``torch.compile`` traces.

    Under export (which ``torch.onnx.export(..., dynamo=True)`` uses) a Python branch on a dynamic side would bake
    the example's block split into a graph that claims every size. Under compile the branches would recompile
    per edge case, each trace taking tens of seconds; Dynamo cannot tell a traced module whether its sizes are
    dynamic, so compiled code always takes this form (SDPA with a key mask: PyTorch's memory-efficient kernel on
    CUDA rather than FlashAttention).
    """
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints or SymInts, in integer arithmetic (no float, so no guard)."""
    return (a + b - 1) // b


def _check_side(value: object, what: str, spec: object) -> None:
    if isinstance(value, torch.SymInt):
        # worked out from a traced grid side (block_from_count under export), >= 1 by construction
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} sides must be ints (or None for a whole side), got {spec!r}")
    if value < 1:
        raise ValueError(f"{what} sides must be >= 1, got {spec!r}")


def resolve_block(size: tuple[int, int], block: BlockSpec) -> tuple[int, int]:
    """Turn a block spec into concrete ``(bh, bw)`` for the grid ``size``.

    Args:
        size: the token grid ``(H, W)``.
        block: an int for square windows, ``(bh, bw)`` where ``None`` means the whole side (a stripe), or a
            :class:`BlockCount`.

    Returns:
        ``(bh, bw)`` with ``1 <= bh <= H`` and ``1 <= bw <= W`` (under export, sides are not clipped).
    """
    height, width = check_size(size)
    if isinstance(block, BlockCount):
        return block_from_count((height, width), (block.rows, block.cols))
    sides = (block, block) if isinstance(block, int) and not isinstance(block, bool) else block
    if not isinstance(sides, (tuple, list)) or len(sides) != 2:
        raise TypeError(f"block must be an int or a (bh, bw) pair, got {block!r}")
    resolved = []
    for side, full in zip(sides, (height, width), strict=True):
        if side is None:
            resolved.append(full)
            continue
        _check_side(side, "block", block)
        # Under export a block larger than the grid stays as given: padded and masked, it attends the same tokens.
        resolved.append(side if padded_blocks() or side <= full else full)
    return resolved[0], resolved[1]


def block_from_count(size: tuple[int, int], num_blocks: int | tuple[int, int]) -> tuple[int, int]:
    """The block that cuts ``size`` into about ``num_blocks`` blocks, the paper's "b blocks of m/b tokens".

    Args:
        size: the token grid ``(H, W)``.
        num_blocks: ``(nh, nw)`` blocks along H and W, or an int ``n`` for ``(n, n)``. ``(4, 1)`` gives four
            horizontal stripes, ``(2, 2)`` four windows.

    Returns:
        ``(ceil(H / nh), ceil(W / nw))``, so never more than the grid. Where a side does not divide, the last block
        along it is smaller, so the count can be lower than asked (a 5-row grid in 4 blocks gives 3 blocks
        of 2, 2 and 1 rows).
    """
    height, width = check_size(size)
    counts = (num_blocks, num_blocks) if isinstance(num_blocks, int) else num_blocks
    if not isinstance(counts, (tuple, list)) or len(counts) != 2:
        raise TypeError(f"num_blocks must be an int or a (nh, nw) pair, got {num_blocks!r}")
    for count in counts:
        _check_side(count, "num_blocks", num_blocks)
    # ceil(H / min(nh, H)) == ceil(H / nh) for every H >= 1; the latter needs no branch on H
    return ceil_div(height, counts[0]), ceil_div(width, counts[1])


def grid_to_blocks(grid: Tensor, bh: int, bw: int) -> Tensor:
    """``[B, h, H, W, d]`` with ``bh | H`` and ``bw | W`` -> ``[B, h, nb, bh * bw, d]``, blocks in row-major order."""
    batch, heads, height, width, dim = grid.shape
    blocks = grid.reshape(batch, heads, height // bh, bh, width // bw, bw, dim).transpose(3, 4)
    return blocks.reshape(batch, heads, (height // bh) * (width // bw), bh * bw, dim)


def blocks_to_grid(blocks: Tensor, height: int, width: int, bh: int, bw: int) -> Tensor:
    """Inverse of :func:`grid_to_blocks`: ``[B, h, nb, bh * bw, d]`` -> ``[B, h, H, W, d]``."""
    batch, heads, _, _, dim = blocks.shape
    grid = blocks.reshape(batch, heads, height // bh, width // bw, bh, bw, dim).transpose(3, 4)
    return grid.reshape(batch, heads, height, width, dim)


def blockify(x: Tensor, size: tuple[int, int], block: BlockSpec) -> Tensor:
    """Cut tokens on a grid into blocks, zero-padding the grid to a multiple of the block.

    Args:
        x: tokens ``[B, heads, N, d]`` in row-major grid order, ``N == H * W``.
        size: the grid ``(H, W)``.
        block: the block spec (see :func:`resolve_block`).

    Returns:
        ``[B, heads, nb, bh * bw, d]`` with ``nb = ceil(H / bh) * ceil(W / bw)`` blocks in row-major order,
        each block's tokens in row-major order. Tokens added by padding are zero; :func:`unblockify` drops
        them.
    """
    height, width = check_tokens(x, size)
    if padded_blocks():
        return gather_blocks(x, *block_token_index((height, width), block_layout((height, width), block), x.device))
    bh, bw = resolve_block((height, width), block)
    batch, heads, _, dim = x.shape
    grid = x.reshape(batch, heads, height, width, dim)
    pad_h, pad_w = -height % bh, -width % bw
    if pad_h or pad_w:
        grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
    return grid_to_blocks(grid, bh, bw)


def block_layout(size: tuple[int, int], block: BlockSpec) -> tuple[int, int, int, int]:
    """``(bh, bw, nh, nw)``: the concrete block and how many blocks cut the grid along H and W.

    Outside export ``nh = ceil(H / bh)``. Under export a side's count is chosen so that no traced expression
    nests divisions: 1 for a whole side, the count itself for a :class:`BlockCount` (trailing blocks may then
    lie wholly past the grid, which :func:`block_token_index` marks invalid).
    """
    height, width = check_size(size)
    bh, bw = resolve_block((height, width), block)
    if not padded_blocks():
        return bh, bw, ceil_div(height, bh), ceil_div(width, bw)
    if isinstance(block, BlockCount):
        return bh, bw, block.rows, block.cols
    sides = (block, block) if isinstance(block, int) else block
    nh = 1 if sides[0] is None else ceil_div(height, bh)
    nw = 1 if sides[1] is None else ceil_div(width, bw)
    return bh, bw, nh, nw


def block_token_index(
    size: tuple[int, int], layout: tuple[int, int, int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Where each block's tokens come from, for the branch-free (export) form of :func:`blockify`.

    Returns:
        ``tokens`` ``[nb, bh * bw]``, the row-major grid index of every block position (a valid one where the
        position lies past the grid's edge), and ``valid`` ``[nb, bh * bw]``, whether it lies on the grid. Built
        by broadcasting ``arange``s, with no reshape, so a traced graph needs no proof about how sides divide.
    """
    (height, width), (bh, bw, nh, nw) = size, layout
    blocks = torch.arange(nh * nw, device=device)[:, None]
    positions = torch.arange(bh * bw, device=device)[None, :]
    rows = blocks // nw * bh + positions // bw
    cols = _remainder(blocks, nw) * bw + _remainder(positions, bw)
    valid = (rows < height) & (cols < width)
    return rows.clamp(max=height - 1) * width + cols.clamp(max=width - 1), valid


def gather_blocks(x: Tensor, tokens: Tensor, valid: Tensor) -> Tensor:
    """``[B, heads, N, d]`` -> ``[B, heads, nb, bh * bw, d]`` by the index of :func:`block_token_index`, positions
    past the grid zeroed (as :func:`blockify` pads)."""
    return x[:, :, tokens] * valid[:, :, None].to(x.dtype)


def grid_token_index(
    size: tuple[int, int], layout: tuple[int, int, int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """For each grid token, row-major, its block and its position in the block: the inverse of
    :func:`block_token_index`, two ``[H * W]`` index tensors."""
    (height, width), (bh, bw, _, nw) = size, layout
    tokens = torch.arange(height * width, device=device)
    rows, cols = tokens // width, _remainder(tokens, width)
    return rows // bh * nw + cols // bw, _remainder(rows, bh) * bw + _remainder(cols, bw)


def _remainder(index: Tensor, divisor: int) -> Tensor:
    """``index % divisor`` for non-negative ``index`` as ``index - (index // divisor) * divisor``: ONNX's exporter
    has no remainder by a traced size, only division."""
    return index - index // divisor * divisor


def unblockify(blocks: Tensor, size: tuple[int, int], block: BlockSpec) -> Tensor:
    """Put blocks made by :func:`blockify` back on the grid and drop the padding.

    Args:
        blocks: ``[B, heads, nb, bh * bw, d]``.
        size: the original grid ``(H, W)``.
        block: the block spec given to :func:`blockify`.

    Returns:
        ``[B, heads, H * W, d]``.
    """
    height, width = check_size(size)
    bh, bw, nh, nw = block_layout((height, width), block)
    expected = nh * nw, bh * bw
    if blocks.dim() != 5 or tuple(blocks.shape[2:4]) != expected:
        raise ValueError(
            f"blocks of shape {tuple(blocks.shape)} do not fit grid {height}x{width} cut into {bh}x{bw} blocks: "
            f"expected [B, heads, {expected[0]}, {expected[1]}, d]"
        )
    if padded_blocks():
        block_index, position = grid_token_index((height, width), (bh, bw, nh, nw), blocks.device)
        return blocks[:, :, block_index, position]
    grid = blocks_to_grid(blocks, nh * bh, nw * bw, bh, bw)[:, :, :height, :width]
    return grid.reshape(blocks.shape[0], blocks.shape[1], height * width, blocks.shape[-1])
