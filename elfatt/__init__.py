"""elfatt: ELFATT, Efficient Linear Fast Attention for vision transformers (Wu et al., ACM MM 2025)."""

from __future__ import annotations

from typing import Any

from elfatt._timm_registration import register_when_timm_imports
from elfatt.modules import DEFAULT_BLOCK, ELFATTAttention, LePE
from elfatt.ops import BlockCount, BlockSpec, elfatt, global_head_count

__version__ = "0.1.0"

__all__ = [
    "BlockCount",
    "BlockSpec",
    "DEFAULT_BLOCK",
    "ELFATTAttention",
    "LePE",
    "elfatt",
    "global_head_count",
    "patch_timm_vit",
]


register_when_timm_imports()


def __getattr__(name: str) -> Any:
    """``patch_timm_vit`` is imported on first use, so that ``import elfatt`` does not load the model files."""
    if name == "patch_timm_vit":
        from elfatt.models.timm_vit_patch import patch_timm_vit

        return patch_timm_vit
    raise AttributeError(f"module 'elfatt' has no attribute {name!r}")
