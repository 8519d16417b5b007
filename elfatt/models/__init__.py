"""Backbones with ELFATT attention: CSWin-ELFATT, Swin-ELFATT and ViT-ELFATT, timm-style.

``create_model("cswin_elfatt_tiny_224")`` and ``list_models("swin_*")`` work without timm; when timm imports,
importing this package also registers every variant with timm, so ``timm.create_model`` builds them too.
``patch_timm_vit`` swaps ELFATT into an existing timm ViT, keeping its pretrained weights.
"""

from elfatt.models._builder import FeatureGetterNet, FeatureInfo
from elfatt.models._registry import create_model, is_model, list_models, register_model, timm_available
from elfatt.models.cswin_elfatt import CSWinELFATT, checkpoint_filter_fn
from elfatt.models.swin_elfatt import SwinELFATT
from elfatt.models.vit_elfatt import PrefixELFATTAttention, VisionTransformerELFATT, patch_timm_vit

__all__ = [
    "CSWinELFATT",
    "FeatureGetterNet",
    "FeatureInfo",
    "PrefixELFATTAttention",
    "SwinELFATT",
    "VisionTransformerELFATT",
    "checkpoint_filter_fn",
    "create_model",
    "is_model",
    "list_models",
    "patch_timm_vit",
    "register_model",
    "timm_available",
]
