"""Cutting a token grid into blocks (windows or stripes) and putting it back.

A block is ``(bh, bw)`` tokens. A side given as ``None`` spans the whole grid side, so ``(2, None)`` is a
horizontal stripe of height 2 and ``(None, 2)`` a vertical one. A side larger than the grid is clipped to
it, so a block never holds more rows or columns than the grid has.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from elfatt._checks import check_size, check_tokens

__all__ = ["BlockSpec", "resolve_block", "block_from_count", "blockify", "unblockify"]

BlockSpec = int | tuple[int | None, int | None]


def _check_side(value: object, what: str, spec: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} sides must be ints (or None for a whole side), got {spec!r}")
    if value < 1:
        raise ValueError(f"{what} sides must be >= 1, got {spec!r}")


def resolve_block(size: tuple[int, int], block: BlockSpec) -> tuple[int, int]:
    """Turn a block spec into concrete ``(bh, bw)`` for the grid ``size``.

    Args:
        size: the token grid ``(H, W)``.
        block: an int for square windows, or ``(bh, bw)`` where ``None`` means the whole side (a stripe).

    Returns:
        ``(bh, bw)`` with ``1 <= bh <= H`` and ``1 <= bw <= W``.
    """
    height, width = check_size(size)
    sides = (block, block) if isinstance(block, int) and not isinstance(block, bool) else block
    if not isinstance(sides, (tuple, list)) or len(sides) != 2:
        raise TypeError(f"block must be an int or a (bh, bw) pair, got {block!r}")
    resolved = []
    for side, full in zip(sides, (height, width), strict=True):
        if side is None:
            resolved.append(full)
            continue
        _check_side(side, "block", block)
        resolved.append(min(side, full))
    return resolved[0], resolved[1]


def block_from_count(size: tuple[int, int], num_blocks: int | tuple[int, int]) -> tuple[int, int]:
    """The block that cuts ``size`` into about ``num_blocks`` blocks, the paper's "b blocks of m/b tokens".

    Args:
        size: the token grid ``(H, W)``.
        num_blocks: ``(nh, nw)`` blocks along H and W, or an int ``n`` for ``(n, n)``. ``(4, 1)`` gives four
            horizontal stripes, ``(2, 2)`` four windows.

    Returns:
        ``(ceil(H / nh), ceil(W / nw))``, clipped to the grid. Where a side does not divide, the last block
        along it is smaller, so the count can be lower than asked (a 5-row grid in 4 blocks gives 3 blocks
        of 2, 2 and 1 rows).
    """
    height, width = check_size(size)
    counts = (num_blocks, num_blocks) if isinstance(num_blocks, int) else num_blocks
    if not isinstance(counts, (tuple, list)) or len(counts) != 2:
        raise TypeError(f"num_blocks must be an int or a (nh, nw) pair, got {num_blocks!r}")
    for count in counts:
        _check_side(count, "num_blocks", num_blocks)
    return math.ceil(height / min(counts[0], height)), math.ceil(width / min(counts[1], width))


def grid_to_blocks(grid: Tensor, bh: int, bw: int) -> Tensor:
    """``[B, h, H, W, d]`` with ``bh | H`` and ``bw | W`` -> ``[B, h, nb, bh * bw, d]``, blocks in row-major order."""
    batch, heads, height, width, dim = grid.shape
    blocks = grid.reshape(batch, heads, height // bh, bh, width // bw, bw, dim).transpose(3, 4)
    return blocks.reshape(batch, heads, -1, bh * bw, dim)


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
    bh, bw = resolve_block((height, width), block)
    batch, heads, _, dim = x.shape
    grid = x.reshape(batch, heads, height, width, dim)
    pad_h, pad_w = -height % bh, -width % bw
    if pad_h or pad_w:
        grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
    return grid_to_blocks(grid, bh, bw)


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
    bh, bw = resolve_block((height, width), block)
    padded_h, padded_w = height + (-height % bh), width + (-width % bw)
    expected = (padded_h // bh) * (padded_w // bw), bh * bw
    if blocks.dim() != 5 or tuple(blocks.shape[2:4]) != expected:
        raise ValueError(
            f"blocks of shape {tuple(blocks.shape)} do not fit grid {height}x{width} cut into {bh}x{bw} blocks: "
            f"expected [B, heads, {expected[0]}, {expected[1]}, d]"
        )
    grid = blocks_to_grid(blocks, padded_h, padded_w, bh, bw)[:, :, :height, :width]
    return grid.reshape(blocks.shape[0], blocks.shape[1], height * width, blocks.shape[-1])
