"""Swin-ELFATT: the Swin Transformer layout with ELFATT attention over each whole stage map.

Papers:
    ELFATT: Efficient Linear Fast Attention for Vision Transformers. Chong Wu, Maolin Che, Renjie Xu,
    Zhuoheng Ran, Hong Yan; ACM MM 2025. https://arxiv.org/abs/2501.06098
    Swin Transformer: Hierarchical Vision Transformer using Shifted Windows. Ze Liu et al.; ICCV 2021.
    https://arxiv.org/abs/2103.14030

Swin's widths, depths and heads, and pre-norm blocks with an MLP of ratio 4. What changes:

- Attention is ELFATT over the whole stage map, as FLatten-Swin and Agent-Swin use a window equal to the map:
  the global linear heads see every token and the blockified softmax heads attend inside ``b`` windows. The
  windows come from the paper's fixed block count per stage (default ``(8, 4, 4, 1)``) laid out as the
  squarest grid with more rows than columns: 8 -> (4, 2) windows, 4 -> (2, 2), 1 -> (1, 1) (full softmax in
  the 7x7 last stage at 224). ``block=BlockCount(nh, nw)`` gives the layout directly, a size fixed windows.
- No relative-position bias (LePE gives position, and a bias would break the mask-free FlashAttention call)
  and no shifted windows: Swin shifts to pass information between windows, which the global heads already do
  in every block.
- Merging is CSWin's 3x3 stride-2 conv with LayerNorm (see :class:`~elfatt.models.cswin_elfatt.ConvMerge`)
  instead of Swin's 2x2 concatenation and linear layer: that is what reproduces the paper's 30M / 91M params.
- The stem is CSWin's 7x7 stride-4 conv (padding 2) with LayerNorm, not Swin's 4x4 patchify conv. The paper
  does not say so, but its FLOPs do: with the 7x7 stem Swin-T gives the published 4.99G / 4.67G (nFA / FA)
  and Swin-B 16.48G / 15.68G (published 16.46G / 15.68G); Swin's 4x4 stem leaves them 0.03G / 0.04G short.

Heads. ELFATT gives half of each block's channels to global linear heads and half to blockified heads. Swin-T
and Swin-S have 3 heads of 32 in their first stage, which do not halve; here that stage uses 2 heads of 48
channels, one global and one blockified, as CSWin's code does for its two head groups (``num_heads // 2`` heads
of ``dim // 2`` channels each). The channels split in half as in every other stage and the parameters are
those of 3 heads. The paper does not say, but this is the split its FLOPs fit: Swin-T's sparse matmuls then
cost 0.32G, the published nFA - FA gap, where 1 global + 2 block heads of 32 would cost 0.40G (5.02G nFA).
Pass ``num_heads=(3, 6, 12, 24), split=(1 / 3, 0.5, 0.5, 0.5)`` for that instead.

``forward_features`` returns ``[B, C, H, W]`` (timm's Swin returns NHWC; both families here share one
convention, see :mod:`elfatt.models.cswin_elfatt`).

Licence: MIT.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from elfatt.models._backbone import build_hierarchical
from elfatt.models.cswin_elfatt import CSWinELFATT, _cfg
from elfatt.ops.blocks import BlockCount

__all__ = ["SwinELFATT", "window_grid"]


def window_grid(count: int) -> tuple[int, int]:
    """``(nh, nw)`` windows for ``count`` blocks: the squarest factorisation with ``nh >= nw``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"a block count must be a positive int, got {count!r}")
    columns = max(d for d in range(1, math.isqrt(count) + 1) if count % d == 0)
    return count // columns, columns


class SwinELFATT(CSWinELFATT):
    """Swin-ELFATT: Swin's layout, ELFATT over whole stage maps, windows for the block heads.

    Takes :class:`~elfatt.models.cswin_elfatt.CSWinELFATT`'s arguments; the defaults are Swin-T's.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 6, 12, 24),
        **kwargs: Any,
    ) -> None:
        """
        Args:
            embed_dim: channels of the first stage.
            depths: blocks per stage.
            num_heads: heads per stage; Swin-T's first stage as 2 heads of 48 (see the module docstring).
            **kwargs: the rest of :class:`~elfatt.models.cswin_elfatt.CSWinELFATT`'s arguments.
        """
        super().__init__(embed_dim=embed_dim, depths=depths, num_heads=num_heads, **kwargs)

    @staticmethod
    def block_grid(count: int) -> tuple[int, int]:
        """The ``(nh, nw)`` windows of a stage given ``b`` blocks (see :func:`window_grid`)."""
        return window_grid(count)


default_cfgs = generate_default_cfgs(
    {
        "swin_elfatt_tiny_224": _cfg(),
        "swin_elfatt_small_224": _cfg(),
        "swin_elfatt_base_224": _cfg(),
        "swin_elfatt_base_384": _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
        "swin_elfatt_tiny_hr": _cfg(input_size=(3, 512, 512), pool_size=(16, 16), crop_pct=1.0),
        "swin_elfatt_base_hr": _cfg(input_size=(3, 512, 512), pool_size=(16, 16), crop_pct=1.0),
    }
)

HR_BLOCK = 8
# The base variants' 4, 4, 4 and 1 windows.
BASE_BLOCK = [BlockCount(2, 2)] * 3 + [BlockCount(1, 1)]


def _create(variant: str, pretrained: bool, args: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    return build_hierarchical(SwinELFATT, variant, pretrained, args, kwargs)


@register_model
def swin_elfatt_tiny_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-T-ELFATT: embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24) with stage 1 as 1 + 1 heads; 30M params."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(2, 6, 12, 24))
    return _create("swin_elfatt_tiny_224", pretrained, args, kwargs)


@register_model
def swin_elfatt_small_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-S-ELFATT: embed 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24) with stage 1 as 1 + 1 heads."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(2, 6, 12, 24))
    return _create("swin_elfatt_small_224", pretrained, args, kwargs)


@register_model
def swin_elfatt_base_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-B-ELFATT: embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32), blocks (4, 4, 4, 1); 91M params."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), block=BASE_BLOCK)
    return _create("swin_elfatt_base_224", pretrained, args, kwargs)


@register_model
def swin_elfatt_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-B-ELFATT at 384: the base model; a fixed block count makes its windows grow with the input."""
    args = dict(img_size=384, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), block=BASE_BLOCK)
    return _create("swin_elfatt_base_384", pretrained, args, kwargs)


@register_model
def swin_elfatt_tiny_hr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-T-ELFATT for high resolution: Swin-T-ELFATT's weights, fixed 8x8 windows in every stage instead of
    the paper's block counts, so the softmax heads cost the same per token at any input (linear in tokens)."""
    args = dict(img_size=512, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(2, 6, 12, 24), block=HR_BLOCK)
    return _create("swin_elfatt_tiny_hr", pretrained, args, kwargs)


@register_model
def swin_elfatt_base_hr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-B-ELFATT for high resolution: fixed 8x8 windows in every stage (see :func:`swin_elfatt_tiny_hr`)."""
    args = dict(img_size=512, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), block=HR_BLOCK)
    return _create("swin_elfatt_base_hr", pretrained, args, kwargs)
