"""Training-free ELFATT for diffusers UNets and diffusion transformers (PixArt, DiT, SD3, FLUX):
``apply_patch(pipe)`` / ``remove_patch(pipe)``.

Needs the ``diffusion`` extra (``pip install elfatt[diffusion]``); ``import elfatt`` never imports diffusers.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("diffusers") is None:
    raise ImportError("elfatt.diffusion needs diffusers: pip install 'elfatt[diffusion]'")

from elfatt.diffusion.merge import TokenMerge, bipartite_soft_matching_2d  # noqa: E402
from elfatt.diffusion.patch import apply_patch, is_patched, patch_config, remove_patch  # noqa: E402
from elfatt.diffusion.processor import ELFATTAttnProcessor, PatchConfig, latent_grid  # noqa: E402

__all__ = [
    "ELFATTAttnProcessor",
    "PatchConfig",
    "TokenMerge",
    "apply_patch",
    "bipartite_soft_matching_2d",
    "is_patched",
    "latent_grid",
    "patch_config",
    "remove_patch",
]
