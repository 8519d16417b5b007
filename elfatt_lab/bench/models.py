"""The model-level benchmark backbone: a ViT with patch 16 whose attention is any registered mechanism.

Layouts follow DeiT/ViT (Touvron et al. 2021; Dosovitskiy et al. 2021). Tokens stay on their ``(H, W)`` grid
(no class token; the head pools them), so every mechanism sees the same grid; the position embedding is learned
at 224 and resized bicubically to other resolutions, as timm does for ``dynamic_img_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elfatt_lab.attention import MechanismBlock

__all__ = ["VIT_LAYOUTS", "AttentionViT", "check_resolution"]

# name: (embed dim, depth, heads); vit_micro is for smoke tests, the others are DeiT's.
VIT_LAYOUTS: dict[str, tuple[int, int, int]] = {
    "vit_micro": (64, 2, 4),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


def check_resolution(resolution: int, patch: int = 16) -> None:
    """Raise ValueError unless ``resolution`` is a positive multiple of ``patch``."""
    if resolution < patch or resolution % patch:
        raise ValueError(f"resolution {resolution} is not a positive multiple of the patch size {patch}")


class AttentionViT(nn.Module):
    """ViT with patch 16 and a chosen attention mechanism; images ``[B, 3, H, W]`` to logits ``[B, classes]``."""

    def __init__(self, mechanism: str, layout: str = "vit_small", *, num_classes: int = 1000, patch: int = 16) -> None:
        super().__init__()
        if layout not in VIT_LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(VIT_LAYOUTS)}")
        dim, depth, heads = VIT_LAYOUTS[layout]
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, dim, 224 // patch, 224 // patch) * 0.02)
        self.blocks = nn.ModuleList(MechanismBlock(dim, heads, mechanism) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        for side in images.shape[-2:]:
            check_resolution(side, self.patch)
        x = self.patch_embed(images)
        size = (x.shape[-2], x.shape[-1])
        pos = self.pos_embed
        if pos.shape[-2:] != size:
            pos = F.interpolate(pos, size, mode="bicubic", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x, size)
        return self.head(self.norm(x).mean(dim=1))
