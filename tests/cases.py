"""The shape grid the tests sweep: square and non-square grids, blocks that do and do not divide, windows and
stripes, 1..8 heads, odd head dims, batch 1 and 3."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from elfatt.ops import BlockSpec


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    height: int
    width: int
    dim: int
    block: BlockSpec

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def concrete_block(self) -> tuple[int, int]:
        """The block as whole numbers, worked out here independently of the library."""
        bh, bw = (self.block, self.block) if isinstance(self.block, int) else self.block
        bh = self.height if bh is None else min(bh, self.height)
        bw = self.width if bw is None else min(bw, self.width)
        return bh, bw

    @property
    def global_split(self) -> float:
        """Half the heads, rounded down, as global heads."""
        return (self.heads // 2) / self.heads

    def qkv(self, generator: torch.Generator, dtype: torch.dtype, scale: float = 1.0, prefix: int = 0):
        """Fresh random ``qkv`` ``[B, P + N, 3, heads, d]`` in ``dtype`` with gradients, a qkv linear's output,
        and its q, k, v views ``[B, P + N, heads, d]``."""
        shape = (self.batch, prefix + self.tokens, 3, self.heads, self.dim)
        qkv = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype).requires_grad_()
        return qkv, qkv.unbind(2)

    def __str__(self) -> str:
        block = "x".join(
            "all" if side is None else str(side)
            for side in ((self.block, self.block) if isinstance(self.block, int) else self.block)
        )
        return f"B{self.batch}-H{self.heads}-{self.height}x{self.width}-D{self.dim}-blk{block}"


CASES = [
    Case(1, 1, 4, 4, 8, (2, 2)),
    Case(3, 2, 5, 7, 5, (2, 3)),
    Case(1, 4, 6, 9, 16, (2, None)),
    Case(3, 3, 7, 4, 7, (None, 3)),
    Case(1, 8, 3, 11, 4, 4),
    Case(3, 6, 9, 13, 12, 5),
    Case(1, 2, 1, 1, 3, 2),
    Case(1, 5, 12, 1, 9, (5, 1)),
    Case(3, 7, 8, 6, 6, (3, 4)),
]
CASE_IDS = [str(case) for case in CASES]
