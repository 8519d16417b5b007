"""``patch_timm_vit``: ELFATT swapped into an existing timm ``VisionTransformer`` in place, keeping its weights.

Each attention layer takes over the pretrained ``qkv`` / ``proj`` (and qk norms) and gains LePE convs that start at
zero, so the patched model differs from the pretrained one by the attention alone until it is fine-tuned. The token
grid comes from the images, recorded by a forward pre-hook on ``patch_embed`` that every path through a timm ViT
calls. See :mod:`elfatt.models.vit_elfatt` for how prefix tokens and heads are treated.

Licence: MIT.
"""

import math
from typing import Any

import torch.nn as nn
from torch import Tensor

from elfatt._deprecated import count_block, deprecated_block
from elfatt.models.vit_elfatt import DEFAULT_BLOCK, VisionTransformerELFATT
from elfatt.modules import ELFATTAttention
from elfatt.ops.blocks import BlockSpec, normalize_block
from elfatt.ops.checks import half_split, pair

__all__ = ["TimmELFATTAttention", "patch_timm_vit"]


class _TokenGrid:
    """The token grid of a patched ViT's current input, shared by its attention layers.

    It is the forward pre-hook of ``model.patch_embed``, which every path through a timm ViT (``forward``,
    ``forward_features``, ``forward_intermediates``) calls with the images before any block runs: it records
    their grid there. A plain object, so ``copy.deepcopy`` (EMA models) copies it once for the hook and the
    layers together.
    """

    def __init__(self, num_prefix_tokens: int) -> None:
        self.num_prefix_tokens = num_prefix_tokens
        self.size: tuple[int, int] | None = None

    def __call__(self, patch_embed: nn.Module, args: tuple[Any, ...]) -> None:
        images = args[0] if args else None
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"a ViT patched with ELFATT takes images [B, C, H, W], got {shape}")
        self.size = _feat_size(patch_embed, (images.shape[-2], images.shape[-1]))


def _feat_size(patch_embed: nn.Module, img_size: tuple[int, int]) -> tuple[int, int]:
    """The token grid of ``img_size`` pixels: timm's ``dynamic_feat_size``, else from ``patch_size``."""
    if hasattr(patch_embed, "dynamic_feat_size"):
        height, width = patch_embed.dynamic_feat_size(img_size)
        return int(height), int(width)
    ph, pw = pair(patch_embed.patch_size, "patch_size")
    if getattr(patch_embed, "dynamic_img_pad", False):
        return math.ceil(img_size[0] / ph), math.ceil(img_size[1] / pw)
    return img_size[0] // ph, img_size[1] // pw


class TimmELFATTAttention(ELFATTAttention):
    """:class:`~elfatt.modules.ELFATTAttention` with timm's ``Attention.forward(x, attn_mask=None, is_causal=False)``.

    Made by :func:`patch_timm_vit`; the grid and the prefix-token count come from the model's input, recorded by a
    pre-hook on its ``patch_embed``.
    """

    def __init__(self, dim: int, num_heads: int, *, token_grid: _TokenGrid, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.token_grid = token_grid

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Attend timm's ``[B, P + N, C]`` tokens on the grid of the model's current input."""
        if attn_mask is not None or is_causal:
            raise ValueError(
                "ELFATT attention takes no attention mask and is not causal: its global linear heads have no "
                "score matrix to mask; run the patched ViT without attn_mask / is_causal"
            )
        grid, prefix = self.token_grid.size, self.token_grid.num_prefix_tokens
        if grid is None:
            raise ValueError(
                "the token grid is unknown: a ViT patched by patch_timm_vit learns it from the images its "
                "patch_embed sees; run the model (or forward_features) rather than its blocks alone"
            )
        if prefix + grid[0] * grid[1] != x.shape[1]:
            raise ValueError(
                f"the input's {grid[0]}x{grid[1]} patch grid and {prefix} prefix tokens make "
                f"{prefix + grid[0] * grid[1]} tokens, but the attention got {x.shape[1]} (patch dropout, which "
                "removes tokens, is not supported)"
            )
        return super().forward(x, grid, prefix)


def _check_identity(module: nn.Module | None, what: str, index: int) -> None:
    if module is not None and not isinstance(module, nn.Identity):
        raise ValueError(f"blocks.{index}.attn has {what} ({type(module).__name__}), which ELFATT does not support")


def _patched_attention(
    attn: nn.Module, index: int, token_grid: _TokenGrid, options: dict[str, Any], split: float | None
) -> TimmELFATTAttention:
    """An ELFATT layer that takes over ``attn``'s ``qkv``, ``proj`` and qk norms, with zero LePE convs."""
    for name in ("qkv", "proj", "num_heads"):
        if not hasattr(attn, name):
            raise ValueError(
                f"blocks.{index}.attn ({type(attn).__name__}) has no {name!r}: patch_timm_vit needs timm's "
                "Attention (a fused qkv Linear, proj, num_heads)"
            )
    qkv, proj, num_heads = attn.qkv, attn.proj, attn.num_heads
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        raise ValueError(f"blocks.{index}.attn.qkv and .proj must be nn.Linear")
    head_dim = getattr(attn, "head_dim", qkv.in_features // num_heads)
    dim = num_heads * head_dim
    if qkv.in_features != dim or qkv.out_features != 3 * dim or proj.in_features != dim:
        raise ValueError(
            f"blocks.{index}.attn: ELFATT needs qkv [{dim} -> {3 * dim}] and proj [{dim} -> ...] for {num_heads} "
            f"heads of {head_dim}, got qkv [{qkv.in_features} -> {qkv.out_features}] and proj [{proj.in_features} "
            "-> ...]"
        )
    _check_identity(getattr(attn, "norm", None), "an attention output norm (scale_norm)", index)
    if getattr(attn, "gate", None) is not None:
        raise ValueError(f"blocks.{index}.attn has an output gate, which ELFATT does not support")
    attn_drop, proj_drop = getattr(attn, "attn_drop", None), getattr(attn, "proj_drop", None)
    layer = TimmELFATTAttention(
        dim,
        num_heads,
        token_grid=token_grid,
        split=half_split(num_heads) if split is None else split,
        attn_drop=getattr(attn_drop, "p", 0.0),
        proj_drop=getattr(proj_drop, "p", 0.0),
        fused_attn=getattr(attn, "fused_attn", True),
        **options,
    )
    # The pretrained modules themselves, not copies: their parameters stay the ones an optimizer or EMA tracks.
    layer.qkv, layer.proj = qkv, proj
    for name in ("q_norm", "k_norm"):
        norm = getattr(attn, name, None)
        setattr(layer, name, nn.Identity() if norm is None else norm)
    layer.train(attn.training)
    # LePE starts at zero, so the patched model differs from the pretrained one by the attention alone.
    for lepe_module in (layer.global_lepe, layer.block_lepe):
        if lepe_module is not None:
            lepe_module.to(device=qkv.weight.device, dtype=qkv.weight.dtype)
            nn.init.zeros_(lepe_module.conv.weight)
            nn.init.zeros_(lepe_module.conv.bias)
    return layer


def _num_prefix_tokens(model: nn.Module) -> int:
    if hasattr(model, "num_prefix_tokens"):
        return int(model.num_prefix_tokens)
    count = int(getattr(model, "cls_token", None) is not None)
    reg_token = getattr(model, "reg_token", None)
    return count + (0 if reg_token is None else reg_token.shape[1])


def patch_timm_vit(
    model: nn.Module,
    *,
    block: BlockSpec | None = None,
    split: float | None = None,
    num_blocks: int | tuple[int, int] | None = None,
) -> nn.Module:
    """Swap the attention of a timm ``VisionTransformer`` for ELFATT in place, keeping its pretrained weights.

    Each ``model.blocks[i].attn`` (timm's ``Attention``) becomes a :class:`TimmELFATTAttention` that takes over its
    ``qkv`` and ``proj`` modules (the same parameters, device and dtype) and its ``q_norm`` / ``k_norm``, and adds
    LePE convs initialised to zero, so LePE adds nothing until fine-tuning trains it. Prefix tokens
    (``model.num_prefix_tokens``: class, registers) attend as :func:`elfatt.ops.elfatt` says of
    ``num_prefix_tokens``. The token grid comes
    from the input: a forward pre-hook on ``model.patch_embed`` (called by ``forward``, ``forward_features`` and
    ``forward_intermediates`` alike) records the images' size and turns it into the grid with the patch
    embedding's ``dynamic_feat_size`` (or ``patch_size``), so ``dynamic_img_size=True`` models take any size.

    Only the structure is used (duck typing), so timm itself is not imported. Patching a model twice changes
    nothing the second time (the arguments of the second call are ignored). The recorded grid is the last input's:
    with gradient checkpointing, run the backward pass before the next forward of another size.

    Args:
        model: a timm ``VisionTransformer`` or any module with ``patch_embed`` (with ``patch_size``),
            ``blocks[i].attn`` (with ``qkv``, ``proj``, ``num_heads``, ``head_dim``) and ``num_prefix_tokens``.
        block: the softmax heads' blocks: the paper's fixed count (``BlockCount(2, 2)`` when None) or a fixed
            size (an int or ``(bh, bw)``: linear cost).
        split: fraction of global linear heads; None for half, rounded down for odd head counts.
        num_blocks: deprecated spelling of ``block=BlockCount(nh, nw)``.

    Returns:
        ``model``, patched.

    Raises:
        ValueError: for a model without that structure, attention with an output norm or gate, active patch
            dropout, or a block spec that is not valid.
    """
    block = deprecated_block(block, {"num_blocks": num_blocks}, {"num_blocks": count_block})
    block = normalize_block(DEFAULT_BLOCK if block is None else block)
    if isinstance(model, VisionTransformerELFATT):
        raise ValueError("the model is already a VisionTransformerELFATT; patch_timm_vit is for timm ViTs")
    for name in ("patch_embed", "blocks"):
        if not hasattr(model, name):
            raise ValueError(f"patch_timm_vit needs a timm VisionTransformer; {type(model).__name__} has no {name!r}")
    if not hasattr(model.patch_embed, "patch_size") and not hasattr(model.patch_embed, "dynamic_feat_size"):
        raise ValueError("model.patch_embed has no patch_size to derive the token grid from")
    patch_drop = getattr(model, "patch_drop", None)
    if patch_drop is not None and getattr(patch_drop, "prob", 0.0) > 0.0:
        raise ValueError("patch dropout removes tokens from the grid; build the ViT with patch_drop_rate=0")
    options = dict(block=block)
    hooks = model.patch_embed._forward_pre_hooks.values()
    token_grid = next((hook for hook in hooks if isinstance(hook, _TokenGrid)), None)
    new_grid = token_grid is None
    if new_grid:
        token_grid = _TokenGrid(_num_prefix_tokens(model))
    # Every layer is built before any is swapped in, so a model that cannot be patched is left as it was.
    layers = {}
    for index, vit_block in enumerate(model.blocks):
        attn = getattr(vit_block, "attn", None)
        if isinstance(attn, TimmELFATTAttention):
            continue
        if isinstance(attn, ELFATTAttention):
            raise ValueError(f"blocks.{index}.attn is already an ELFATT layer that its block hands the grid to")
        if attn is None:
            raise ValueError(f"blocks.{index} ({type(vit_block).__name__}) has no attn to replace")
        layers[index] = _patched_attention(attn, index, token_grid, options, split)
    for index, layer in layers.items():
        model.blocks[index].attn = layer
    if new_grid:
        model.patch_embed.register_forward_pre_hook(token_grid)
    return model
