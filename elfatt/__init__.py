"""elfatt: ELFATT, Efficient Linear Fast Attention for vision transformers (Wu et al., ACM MM 2025).

- :func:`elfatt`: the op, on tokens-last ``[B, P + H * W, heads, d]`` queries, keys and values, and
  :func:`elfatt_sequence` along sequences ``[B, L, heads, d]`` with key padding (the Long Range Arena's);
- :class:`ELFATTAttention`: the layer, a drop-in for timm's ViT ``Attention`` that also takes the grid size;
- ``block=``: how the softmax heads cut the grid, one parameter everywhere: a size (``8``, ``(8, 16)``,
  ``(2, None)`` for stripes) or a count (:class:`BlockCount`), typed :data:`BlockSpec`;
- :func:`register_models`: registers the CSWin-, Swin- and ViT-ELFATT backbones with timm (as ``import
  elfatt.models`` does), and :func:`patch_timm_vit` swaps ELFATT into a timm ViT, keeping its weights;
- :func:`apply_patch` / :func:`remove_patch`: training-free ELFATT in a diffusers pipeline or model;
- :func:`export_onnx`: a backbone's ONNX file, checked in onnxruntime.

``import elfatt`` needs torch alone: timm, diffusers and onnx are imported by the functions that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

from elfatt.modules import ELFATTAttention
from elfatt.ops import BlockCount, BlockSpec, elfatt, elfatt_sequence

__version__ = "0.1.0"

__all__ = [
    "BlockCount",
    "BlockSpec",
    "ELFATTAttention",
    "apply_patch",
    "elfatt",
    "elfatt_sequence",
    "export_onnx",
    "patch_timm_vit",
    "register_models",
    "remove_patch",
]

# The parts that need an optional package, imported on first use: the name, and the module that defines it.
_LAZY = {
    "patch_timm_vit": "elfatt.models.timm_vit_patch",
    "apply_patch": "elfatt.diffusion",
    "remove_patch": "elfatt.diffusion",
    "export_onnx": "elfatt.export",
}


def register_models() -> list[str]:
    """Register every ELFATT backbone with timm (needs the ``models`` extra) and return their names, so that
    ``timm.create_model("cswin_elfatt_tiny_224")`` builds one. Importing :mod:`elfatt.models` does the same."""
    models = importlib.import_module("elfatt.models")
    return models.list_models("*elfatt*")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elfatt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
