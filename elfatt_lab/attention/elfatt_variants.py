"""ELFATT as a registered mechanism, at a fixed block size and at the paper's block count, and its two ablations.

"ELFATT: Efficient Linear Fast Attention for Vision Transformers", Wu, Che, Xu, Ran, Yan, ACM MM 2025,
https://arxiv.org/abs/2501.06098. The layer is :class:`~elfatt.modules.ELFATTAttention`; these builders fix its
options the way the benchmark and the experiments compare it: half of the heads global (rounded down), or every
head in one of the two parts (ablations: the blockified part alone, the global linear part alone).
"""

from __future__ import annotations

from elfatt.modules import DEFAULT_BLOCK, ELFATTAttention
from elfatt.ops.blocks import BlockCount
from elfatt.ops.checks import half_split

__all__ = ["elfatt_fixed_blocks", "elfatt_counted_blocks", "block_part_alone", "global_part_alone"]


def elfatt_fixed_blocks(dim: int, num_heads: int) -> ELFATTAttention:
    """ELFATT with fixed ``DEFAULT_BLOCK x DEFAULT_BLOCK`` blocks: linear in the tokens."""
    return ELFATTAttention(dim, num_heads, block=DEFAULT_BLOCK, split=half_split(num_heads))


def elfatt_counted_blocks(dim: int, num_heads: int) -> ELFATTAttention:
    """ELFATT with the paper's ``b = 4`` blocks (2 x 2) whatever the grid: the blocks grow with it."""
    return ELFATTAttention(dim, num_heads, block=BlockCount(2, 2), split=half_split(num_heads))


def block_part_alone(dim: int, num_heads: int) -> ELFATTAttention:
    """ELFATT's blockified softmax part alone: every head in ``DEFAULT_BLOCK``-sided blocks, with LePE per block."""
    return ELFATTAttention(dim, num_heads, block=DEFAULT_BLOCK, split=0.0)


def global_part_alone(dim: int, num_heads: int) -> ELFATTAttention:
    """ELFATT's global linear part alone: every head global linear attention, with LePE on the whole grid."""
    return ELFATTAttention(dim, num_heads, split=1.0)
