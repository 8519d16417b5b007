"""elfatt: ELFATT, Efficient Linear Fast Attention for vision transformers (Wu et al., ACM MM 2025)."""

from __future__ import annotations

from typing import Any

from elfatt._timm_registration import register_when_timm_imports
from elfatt.blocks import BlockCount, BlockSpec, block_from_count, blockify, resolve_block, unblockify
from elfatt.functional import (
    block_attention,
    elfatt,
    global_head_count,
    global_linear_attention,
    lepe,
    softmax_attention,
)
from elfatt.modules import DEFAULT_BLOCK, ELFATTAttention, LePE

__version__ = "0.1.0"

__all__ = [
    "BlockSpec",
    "DEFAULT_BLOCK",
    "ELFATTAttention",
    "LePE",
    "block_attention",
    "block_from_count",
    "BlockCount",
    "blockify",
    "elfatt",
    "global_head_count",
    "global_linear_attention",
    "lepe",
    "patch_timm_vit",
    "resolve_block",
    "softmax_attention",
    "unblockify",
]


register_when_timm_imports()


def __getattr__(name: str) -> Any:
    """``patch_timm_vit`` is imported on first use, so that ``import elfatt`` does not load the model files."""
    if name == "patch_timm_vit":
        from elfatt.models.timm_vit_patch import patch_timm_vit

        return patch_timm_vit
    raise AttributeError(f"module 'elfatt' has no attribute {name!r}")
