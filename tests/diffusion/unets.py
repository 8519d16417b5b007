"""Small diffusers UNets with random weights, built the way the SD and SDXL UNets are, for the patch's tests."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

CONTEXT_DIM = 16
TEXT_EMBED_DIM = 8
TIME_EMBED_DIM = 4

# Attention at two UNet levels (and the mid block), as SD has it at several.
TWO_LEVELS = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=CONTEXT_DIM,
    attention_head_dim=8,
    norm_num_groups=8,
)

# What SDXL's UNet adds: linear projections in and out of the transformers, several transformer layers per block,
# per-level head sizes, and the text-and-time added conditioning.
SDXL_STYLE = dict(
    TWO_LEVELS,
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=TEXT_EMBED_DIM + 6 * TIME_EMBED_DIM,
)


def build_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    """A UNet of ``config`` with weights drawn from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def record_op_calls(monkeypatch, part: str) -> list:
    """Record the patched layers' calls of the ELFATT op for one ``part``: ``"global"`` (the shapes of the global
    heads' q, merged tokens) or ``"block"`` (the grids of the block heads); returns the list they are added to."""
    import elfatt.diffusion.processor as processor_module

    seen: list = []
    real = processor_module.elfatt

    def spy(q, k, v, size, **kwargs):
        if part == "global" and kwargs.get("num_global_heads"):
            seen.append(q.shape)
        if part == "block" and kwargs.get("num_global_heads") == 0:
            seen.append(size)
        return real(q, k, v, size, **kwargs)

    monkeypatch.setattr(processor_module, "elfatt", spy)
    return seen
