"""Block specs: how the block heads cut the token grid, given as a size (windows, stripes) or as a count.

A block is ``(bh, bw)`` tokens; ``None`` for a side spans the whole grid side, so ``(2, None)`` is a horizontal
stripe of height 2. A side larger than the grid is clipped to it. :class:`BlockCount` cuts the grid into
``rows x cols`` blocks whose size follows the grid, the paper's "b blocks of m/b tokens". Where a side does not
divide, the last block along it is smaller.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["BlockCount", "BlockSpec", "normalize_block", "encode_block", "concrete_block", "resolve_block", "ceil_div"]


class BlockCount(NamedTuple):
    """The grid cut into ``rows x cols`` blocks of ``ceil(H / rows) x ceil(W / cols)`` tokens."""

    rows: int
    cols: int


BlockSpec = int | tuple[int | None, int | None] | BlockCount


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints or SymInts, in integer arithmetic."""
    return (a + b - 1) // b


def encode_block(block: object) -> tuple[int, int, bool]:
    """Check a block spec and encode it as ``(bh, bw, by_count)`` ints, ``0`` for a whole side: the form the
    registered op takes. Raises TypeError or ValueError naming the bad spec."""
    by_count = isinstance(block, BlockCount)
    sides = (block, block) if isinstance(block, int) and not isinstance(block, bool) else block
    if not isinstance(sides, (tuple, list)) or len(sides) != 2:
        raise TypeError(f"block must be an int, a (bh, bw) pair or a BlockCount, got {block!r}")
    encoded = []
    for side in sides:
        if side is None and not by_count:
            encoded.append(0)
            continue
        if isinstance(side, bool) or not isinstance(side, int):
            raise TypeError(f"block sides must be ints (or None for a whole side), got {block!r}")
        if side < 1:
            raise ValueError(f"block sides must be >= 1, got {block!r}")
        encoded.append(side)
    return encoded[0], encoded[1], by_count


def normalize_block(block: object) -> tuple[int | None, int | None] | BlockCount:
    """A checked block spec in one form: a ``(bh, bw)`` size (None for a whole side; an int ``b`` as ``(b, b)``)
    or a :class:`BlockCount`."""
    bh, bw, by_count = encode_block(block)
    return BlockCount(bh, bw) if by_count else (bh or None, bw or None)


def concrete_block(size: tuple[int, int], block: tuple[int, int, bool]) -> tuple[int, int]:
    """The concrete ``(bh, bw)`` of an encoded block on the grid ``size``: ``1 <= bh <= H``, ``1 <= bw <= W``."""
    (height, width), (bh, bw, by_count) = size, block
    if by_count:
        return ceil_div(height, bh), ceil_div(width, bw)
    return (height if bh == 0 else min(bh, height)), (width if bw == 0 else min(bw, width))


def resolve_block(size: tuple[int, int], block: BlockSpec) -> tuple[int, int]:
    """The concrete ``(bh, bw)`` of the block spec ``block`` on the grid ``size``."""
    return concrete_block(size, encode_block(block))
