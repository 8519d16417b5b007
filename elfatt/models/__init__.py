"""Backbones with ELFATT attention: CSWin-ELFATT, Swin-ELFATT and ViT-ELFATT, built and registered with timm.

Importing this package (or calling ``elfatt.register_models()``) registers every variant with timm, so
``timm.create_model("cswin_elfatt_tiny_224")`` builds them; ``create_model`` / ``list_models`` here are timm's.
``patch_timm_vit`` swaps ELFATT into an existing timm ViT, keeping its pretrained weights.
"""

import warnings
from typing import Any

try:
    from timm import create_model, is_model, list_models
except ImportError as error:
    raise ImportError(f"elfatt.models needs timm: pip install 'elfatt[models]' ({error})") from error

from elfatt.models.cswin_elfatt import CSWinELFATT, checkpoint_filter_fn
from elfatt.models.swin_elfatt import SwinELFATT
from elfatt.models.timm_vit_patch import patch_timm_vit
from elfatt.models.vit_elfatt import VisionTransformerELFATT

__all__ = [
    "CSWinELFATT",
    "SwinELFATT",
    "VisionTransformerELFATT",
    "checkpoint_filter_fn",
    "create_model",
    "is_model",
    "list_models",
    "patch_timm_vit",
]


def __getattr__(name: str) -> Any:
    if name == "PrefixELFATTAttention":  # its name before ELFATTAttention took prefix tokens itself
        warnings.warn(
            "PrefixELFATTAttention is deprecated; use elfatt.ELFATTAttention", DeprecationWarning, stacklevel=2
        )
        from elfatt.modules import ELFATTAttention

        return ELFATTAttention
    raise AttributeError(f"module 'elfatt.models' has no attribute {name!r}")
