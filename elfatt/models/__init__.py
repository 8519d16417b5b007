"""Backbones with ELFATT attention: CSWin-ELFATT and Swin-ELFATT, timm-style.

``create_model("cswin_elfatt_tiny_224")`` and ``list_models("swin_*")`` work without timm; when timm imports,
importing this package also registers every variant with timm, so ``timm.create_model`` builds them too.
"""

from elfatt.models._builder import FeatureGetterNet, FeatureInfo
from elfatt.models._registry import create_model, is_model, list_models, register_model, timm_available
from elfatt.models.cswin_elfatt import CSWinELFATT, checkpoint_filter_fn
from elfatt.models.swin_elfatt import SwinELFATT

__all__ = [
    "CSWinELFATT",
    "FeatureGetterNet",
    "FeatureInfo",
    "SwinELFATT",
    "checkpoint_filter_fn",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "timm_available",
]
