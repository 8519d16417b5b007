"""ViT-ELFATT: the DeiT / ViT layout with ELFATT attention, and ``patch_timm_vit`` for timm's pretrained ViTs.

Papers:
    ELFATT: Efficient Linear Fast Attention for Vision Transformers. Chong Wu, Maolin Che, Renjie Xu,
    Zhuoheng Ran, Hong Yan; ACM MM 2025. https://arxiv.org/abs/2501.06098
    An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale. Alexey Dosovitskiy et al.;
    ICLR 2021. https://arxiv.org/abs/2010.11929
    Training data-efficient image transformers & distillation through attention (DeiT). Hugo Touvron et al.;
    ICML 2021. https://arxiv.org/abs/2012.12877

The layout is DeiT's, and its parameter names are timm's ``VisionTransformer``'s, so timm / DeiT checkpoints
load through :func:`checkpoint_filter_fn` (the LePE convs, which they lack, start at zero): a 16x16 stride-16
conv patch embedding, a class token, a learned absolute position embedding over the class token and the patch
grid, pre-norm blocks (attention, then an MLP of ratio 4), a final LayerNorm and a linear head on the class
token (or on the average of the patch tokens). Any input whose sides are multiples of 16 works: the position
embedding is resized bicubically to the grid, as timm's ``dynamic_img_size=True`` does, and every block is
handed the grid ``(H, W)``.

Prefix tokens. ELFATT is defined on a token grid; a ViT also has prefix tokens (the class token, registers)
that lie on no grid. :class:`PrefixELFATTAttention` treats them so that they see every token and cost little:

- global linear heads attend over all ``P + N`` tokens (prefix tokens are keys and values like any other);
  LePE, a convolution on the grid, is added to the ``N`` grid tokens only;
- blockified softmax heads: each grid token attends with exact softmax inside its block of the grid, exactly as
  without prefix tokens (no mask, one FlashAttention-friendly SDPA call); each prefix query attends with exact
  softmax to all ``P + N`` keys, which is ``O(P N)``, linear in the tokens since ``P`` is tiny.

So grid tokens reach the prefix tokens through the global heads only, and the class token gathers from the
whole image in every head. With ``P = 0`` the layer is :class:`~elfatt.modules.ELFATTAttention` exactly.

Heads. Half of the heads are global linear heads; with an odd count (DeiT-Ti has 3) the global heads are
``floor(heads / 2)``: 1 of 3, and 2 blockified heads. Blocks are counted, as in the paper: ``num_blocks=(2, 2)``
by default, four 7x7 windows at 224 (Swin-ELFATT's 14x14 stage uses the same four), growing with the input.
Pass ``block_size`` for fixed-size windows whose cost is linear in the tokens.

:func:`patch_timm_vit` swaps the attention of an existing timm ``VisionTransformer`` for ELFATT in place,
keeping its ``qkv`` / ``proj`` weights and adding LePE convs that start at zero, to fine-tune pretrained ViTs.

Licence: MIT.
"""

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, resample_abs_pos_embed
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    register_notrace_function,
    register_notrace_module,
)
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from elfatt._checks import pair
from elfatt.blocks import BlockSpec, block_from_count, resolve_block
from elfatt.functional import (
    half_split,
)
from elfatt.models.cswin_elfatt import init_weights, new_classifier, stage_indices
from elfatt.modules import ELFATTAttention, attend_heads, check_layer_input

__all__ = [
    "VisionTransformerELFATT",
    "ViTELFATTBlock",
    "PrefixELFATTAttention",
    "TimmELFATTAttention",
    "PatchEmbed",
    "patch_timm_vit",
    "checkpoint_filter_fn",
]

# Blocks of the softmax heads when neither a count nor a size is given: four windows, 7x7 at 224.
DEFAULT_NUM_BLOCKS = (2, 2)


@torch.jit.ignore
def check_prefix_count(num_prefix_tokens: int) -> None:
    """Check that a prefix-token count is an int >= 0."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")


class PrefixELFATTAttention(ELFATTAttention):
    """ELFATT attention over ``P`` prefix tokens (class token, registers) and an ``(H, W)`` grid of tokens.

    The parameters are :class:`~elfatt.modules.ELFATTAttention`'s (``qkv``, ``proj``, ``global_lepe``,
    ``block_lepe``) plus timm's optional ``q_norm`` / ``k_norm``; how prefix tokens attend is in
    :func:`~elfatt.functional.elfatt` (``num_prefix_tokens``). With ``num_prefix_tokens=0`` and no qk norm the
    output is ELFATTAttention's exactly.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qk_norm: bool = False,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            dim: channels ``C``.
            num_heads: heads; ``dim`` must divide by it.
            qk_norm: normalise queries and keys per head (timm's ``qk_norm``) before attention.
            norm_layer: the qk norm over the head dim.
            device, dtype: where and how the parameters are made.
            **kwargs: :class:`~elfatt.modules.ELFATTAttention`'s other arguments (``block``, ``num_blocks``,
                ``split``, ``qkv_bias``, ...).
        """
        super().__init__(dim, num_heads, device=device, dtype=dtype, **kwargs)
        dd = dict(device=device, dtype=dtype)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """Attend ``x`` ``[B, P + H * W, C]``: ``P = num_prefix_tokens`` prefix tokens, then the grid ``size``."""
        check_prefix_count(num_prefix_tokens)
        check_layer_input(x, size, self.dim, num_prefix_tokens)
        q, k, v = self.project_heads(x)
        q, k = self.q_norm(q), self.k_norm(k)
        global_weight, global_bias, block_weight, block_bias = self.lepe_parameters()
        out = attend_heads(
            q,
            k,
            v,
            size,
            num_prefix_tokens,
            self._block,
            self._num_blocks,
            self.num_global_heads,
            global_weight,
            global_bias,
            block_weight,
            block_bias,
            self.attn_drop if self.training else 0.0,
            self.fused_attn,
            self.backend,
        )
        return self.merge_heads(out)


register_notrace_module(PrefixELFATTAttention)


@register_notrace_function
@torch.jit.ignore
def check_patch_images(x: Tensor, in_chans: int, patch_size: tuple[int, int]) -> None:
    """Check that ``x`` is ``[B, in_chans, H, W]`` with sides that are positive multiples of the patch."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images [B, {in_chans}, H, W], got shape {tuple(x.shape)}")
    (ph, pw), (height, width) = patch_size, x.shape[2:]
    if height % ph or width % pw or height < ph or width < pw:
        raise ValueError(f"image sides must be positive multiples of the patch {ph}x{pw}, got {height}x{width}")


class PatchEmbed(nn.Module):
    """Patchify with a ``p x p`` stride-``p`` conv: images ``[B, C, H, W]`` to tokens ``[B, H / p, W / p, D]``."""

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.patch_size = pair(patch_size, "patch_size")
        self.img_size = pair(img_size, "img_size")
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, device=device, dtype=dtype)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid of an image of ``img_size`` pixels."""
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: Tensor) -> Tensor:
        check_patch_images(x, self.in_chans, self.patch_size)
        return self.proj(x).permute(0, 2, 3, 1)


class ViTELFATTBlock(nn.Module):
    """Pre-norm ViT block with :class:`PrefixELFATTAttention`: ``[B, P + H * W, C]`` in and out."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **attn_kwargs: Any,
    ) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            mlp_ratio: MLP hidden width over ``dim``.
            qkv_bias: bias in the qkv projection.
            qk_norm: normalise queries and keys per head.
            proj_drop: dropout after the attention projection and in the MLP.
            attn_drop: dropout on the block heads' attention probabilities.
            drop_path: stochastic depth rate of both residual branches.
            norm_layer: normalisation over channels.
            act_layer: MLP activation.
            device, dtype: where and how the parameters are made.
            **attn_kwargs: the attention's ``block`` / ``num_blocks``, ``split``, ``lepe_kernel``, ``fused_attn``.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = PrefixELFATTAttention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            norm_layer=norm_layer,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            **dd,
            **attn_kwargs,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), size, num_prefix_tokens))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformerELFATT(nn.Module):
    """ViT / DeiT with ELFATT attention (see the module docstring); timm's ``VisionTransformer`` contract."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        num_blocks: int | tuple[int, int] | None = None,
        block_size: BlockSpec | None = None,
        split: float | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        class_token: bool = True,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        lepe_kernel: int = 3,
        fused_attn: bool = True,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            img_size: nominal input size: the grid of the position embedding (other sizes resize it).
            patch_size: side of the square patches.
            in_chans: image channels.
            num_classes: classes of the head; 0 for none.
            global_pool: ``"token"`` (the class token), ``"avg"`` (mean of the patch tokens) or ``""`` (the head
                on every token).
            embed_dim: channels.
            depth: blocks.
            num_heads: attention heads.
            num_blocks: the paper's fixed number of blocks ``(nh, nw)`` of the softmax heads (an int ``n`` for
                ``(n, n)``); ``(2, 2)`` when neither this nor ``block_size`` is given.
            block_size: instead, a fixed block ``(bh, bw)``: costs then linear in the tokens.
            split: fraction of global linear heads; None for half, rounded down (:func:`~elfatt.functional.half_split`).
            mlp_ratio: MLP hidden width over the channels.
            qkv_bias: bias in the qkv projections.
            qk_norm: normalise queries and keys per head.
            class_token: prepend a class token.
            reg_tokens: register tokens after the class token.
            no_embed_class: the position embedding covers the patch grid only (DeiT-III, registers), not the
                prefix tokens (DeiT, the default).
            drop_rate: dropout before the head.
            pos_drop_rate: dropout after adding the position embedding.
            proj_drop_rate: dropout after attention projections and in MLPs.
            attn_drop_rate: dropout on the block heads' attention probabilities.
            drop_path_rate: stochastic depth rate, rising linearly over the blocks to this value.
            lepe_kernel: side of the LePE depthwise kernels.
            fused_attn: block heads through ``F.scaled_dot_product_attention`` (plain matmuls when False).
            norm_layer: normalisation over channels.
            act_layer: MLP activation.
            device, dtype: where and how the parameters are made (timm's ``create_model(device=, dtype=)``).
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if reg_tokens < 0:
            raise ValueError(f"reg_tokens must be >= 0, got {reg_tokens}")
        if num_blocks is not None and block_size is not None:
            raise ValueError("give at most one of num_blocks (a block count) and block_size (a fixed block size)")
        if num_blocks is None and block_size is None:
            num_blocks = DEFAULT_NUM_BLOCKS
        split = half_split(num_heads) if split is None else split
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.num_reg_tokens = reg_tokens
        self.no_embed_class = no_embed_class
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, **dd)
        self.img_size = self.patch_embed.img_size
        grid_tokens = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim, **dd)) if reg_tokens else None
        embed_len = grid_tokens if no_embed_class else grid_tokens + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                ViTELFATTBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[i],
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    num_blocks=num_blocks,
                    block=block_size,
                    split=split,
                    lepe_kernel=lepe_kernel,
                    fused_attn=fused_attn,
                    **dd,
                )
                for i in range(depth)
            ]
        )
        reduction = max(self.patch_embed.patch_size)
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init: truncated normal (0.02) position embedding and linears, near-zero prefix tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: the position embedding and the prefix tokens."""
        return {"pos_embed", "cls_token", "reg_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters by depth (timm's layer-wise learning-rate decay)."""
        return dict(
            stem=r"^cls_token|reg_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (``torch.utils.checkpoint``) to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (0 for none), optionally changing the pool."""
        if global_pool is not None:
            if global_pool not in ("", "avg", "token"):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_classifier(self.num_features, num_classes, self)

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        *,
        num_blocks: int | tuple[int, int] | None = None,
        block_size: BlockSpec | None = None,
    ) -> None:
        """Resize the position embedding to a new nominal input size and, optionally, set the blocks.

        Other sizes work without this (the embedding is resized on the fly); setting it makes the resized
        embedding the parameter, as timm's ``set_input_size`` does. With a fixed block count the blocks grow with
        the input; pass ``num_blocks`` or ``block_size`` to change them.
        """
        if img_size is not None:
            old_grid = self.patch_embed.grid_size
            self.patch_embed.img_size = self.img_size = pair(img_size, "img_size")
            self.patch_embed.grid_size = self.patch_embed.dynamic_feat_size(self.img_size)
            with torch.no_grad():
                pos_embed = resample_abs_pos_embed(
                    self.pos_embed, self.patch_embed.grid_size, old_grid, self._embedded_prefix_tokens()
                )
            self.pos_embed = nn.Parameter(pos_embed.detach().clone(), requires_grad=self.pos_embed.requires_grad)
        if num_blocks is not None and block_size is not None:
            raise ValueError("give at most one of num_blocks and block_size")
        if num_blocks is None and block_size is None:
            return
        if num_blocks is not None:
            block_from_count((1, 1), num_blocks)
        else:
            resolve_block((1, 1), block_size)
        for block in self.blocks:
            block.attn.num_blocks, block.attn.block = num_blocks, block_size

    def _embedded_prefix_tokens(self) -> int:
        return 0 if self.no_embed_class else self.num_prefix_tokens

    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Images to tokens ``[B, P + h * w, C]`` with the position embedding, and the grid ``(h, w)``."""
        x = self.patch_embed(x)
        batch, height, width, channels = x.shape
        pos_embed = resample_abs_pos_embed(
            self.pos_embed, (height, width), self.patch_embed.grid_size, self._embedded_prefix_tokens()
        )
        x = x.reshape(batch, height * width, channels)
        tokens: list[Tensor] = []
        if self.cls_token is not None:
            tokens.append(self.cls_token.expand(batch, -1, -1))
        if self.reg_token is not None:
            tokens.append(self.reg_token.expand(batch, -1, -1))
        if self.no_embed_class:
            x = torch.cat(tokens + [x + pos_embed], dim=1)
        else:
            x = torch.cat(tokens + [x], dim=1) + pos_embed
        return self.pos_drop(x), (height, width)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, in_chans, H, W]`` to the normalised tokens ``[B, P + H / 16 * W / 16, C]``, prefix first."""
        x, size = self._embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, size, self.num_prefix_tokens, use_reentrant=False)
            else:
                x = block(x, size, self.num_prefix_tokens)
        return self.norm(x)

    def pool(self, x: Tensor, pool_type: str | None = None) -> Tensor:
        """Pool tokens: the class token, the mean of the patch tokens, or (``""``) all tokens unchanged."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, 0]
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the tokens and classify; ``pre_logits`` returns the pooled ``[B, C]`` features."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """Per-block features on the patch grid, timm's ``forward_intermediates``.

        Args:
            x: images ``[B, in_chans, H, W]``.
            indices: blocks to return: None for all, ``n`` for the last ``n``, or a list of indices.
            return_prefix_tokens: return ``(grid features, prefix tokens [B, P, C])`` pairs.
            norm: apply the final norm to each returned block's tokens.
            stop_early: accepted for timm's signature; with ``intermediates_only`` the blocks after the last one
                asked for never run, without it all run so that the final features are complete.
            output_fmt: ``"NCHW"`` (``[B, C, h, w]``), ``"NHWC"`` or ``"NLC"`` (``[B, h * w, C]``); the prefix
                tokens are never part of these maps.
            intermediates_only: return only the list of features.

        Returns:
            The features, or ``(final tokens [B, P + h * w, C], features)``.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = stage_indices(len(self.blocks), indices)
        blocks = self.blocks if not stop_early and not intermediates_only else self.blocks[: max_index + 1]
        x, (height, width) = self._embed(x)
        intermediates = []
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, (height, width), self.num_prefix_tokens, use_reentrant=False)
            else:
                x = block(x, (height, width), self.num_prefix_tokens)
            if i not in take_indices:
                continue
            out = self.norm(x) if norm else x
            prefix, grid = out[:, : self.num_prefix_tokens], out[:, self.num_prefix_tokens :]
            if output_fmt != "NLC":
                grid = grid.reshape(grid.shape[0], height, width, -1)
            if output_fmt == "NCHW":
                grid = grid.permute(0, 3, 1, 2).contiguous()
            intermediates.append((grid, prefix) if return_prefix_tokens else grid)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` and, optionally, the final norm and the head."""
        take_indices, max_index = stage_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# ---------------------------------------------------------------------------------------------------------------
# patch_timm_vit: ELFATT into an existing timm VisionTransformer.


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


class TimmELFATTAttention(PrefixELFATTAttention):
    """:class:`PrefixELFATTAttention` with timm's ``Attention.forward(x, attn_mask=None, is_causal=False)``.

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
    num_blocks: int | tuple[int, int] | None = None,
    split: float | None = None,
) -> nn.Module:
    """Swap the attention of a timm ``VisionTransformer`` for ELFATT in place, keeping its pretrained weights.

    Each ``model.blocks[i].attn`` (timm's ``Attention``) becomes a :class:`TimmELFATTAttention` that takes over its
    ``qkv`` and ``proj`` modules (the same parameters, device and dtype) and its ``q_norm`` / ``k_norm``, and adds
    LePE convs initialised to zero, so LePE adds nothing until fine-tuning trains it. Prefix tokens
    (``model.num_prefix_tokens``: class, registers) attend as :func:`~elfatt.functional.elfatt` says of
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
        block: a fixed block of the softmax heads ``(bh, bw)`` (linear cost).
        num_blocks: instead, the paper's fixed block count ``(nh, nw)``; ``(2, 2)`` when neither is given.
        split: fraction of global linear heads; None for half, rounded down for odd head counts.

    Returns:
        ``model``, patched.

    Raises:
        ValueError: for a model without that structure, attention with an output norm or gate, active patch
            dropout, or a block spec that is not valid.
    """
    if block is not None and num_blocks is not None:
        raise ValueError("give either block (a fixed block size) or num_blocks (a fixed block count), not both")
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
    options = dict(block=block, num_blocks=DEFAULT_NUM_BLOCKS if block is None and num_blocks is None else num_blocks)
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


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints, configs and variants.

_LEPE_KEY = re.compile(r"^blocks\.\d+\.attn\.(global|block)_lepe\.conv\.(weight|bias)$")


def checkpoint_filter_fn(state_dict: dict[str, Any], model: VisionTransformerELFATT) -> dict[str, Tensor]:
    """Map a timm / DeiT ViT checkpoint onto a :class:`VisionTransformerELFATT` of the same size.

    The names are timm's already. The checkpoint is unwrapped from ``model`` / ``state_dict``, the position
    embedding resized to the model's grid, and the LePE convs the checkpoint lacks filled with zeros (they add
    nothing before fine-tuning). Anything else that does not fit is left for ``load_state_dict`` to report.
    """
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out = {k.removeprefix("module."): v for k, v in state_dict.items()}
    target = model.state_dict()
    pos_embed = out.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != target["pos_embed"].shape:
        prefix = model._embedded_prefix_tokens()
        side = math.isqrt(pos_embed.shape[1] - prefix)
        if side * side != pos_embed.shape[1] - prefix:
            raise ValueError(
                f"cannot resize a position embedding of {pos_embed.shape[1]} tokens: its grid is not square"
            )
        out["pos_embed"] = resample_abs_pos_embed(pos_embed, model.patch_embed.grid_size, (side, side), prefix)
    for key, value in target.items():
        if _LEPE_KEY.match(key) and key not in out:
            out[key] = torch.zeros_like(value, device="cpu")
    return out


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2501.06098",
        "paper_name": "ELFATT: Efficient Linear Fast Attention for Vision Transformers",
        "origin_url": "https://github.com/Alicewithrabbit/ELFTEST",
        "notes": ("No ELFATT weights; start from DeiT / timm ViT weights with checkpoint_filter_fn and fine-tune.",),
        **kwargs,
    }


# Read by timm's register_model at decoration time, so defined before the entrypoints.
default_cfgs = generate_default_cfgs(
    {
        "vit_elfatt_tiny_patch16_224": _cfg(),
        "vit_elfatt_small_patch16_224": _cfg(),
        "vit_elfatt_base_patch16_224": _cfg(),
    }
)


def _create(variant: str, pretrained: bool, args: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    # timm's ViTs return the last three blocks' features by default, through forward_intermediates.
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformerELFATT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **{**args, **kwargs},
    )


@register_model
def vit_elfatt_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-Ti with ELFATT: embed 192, 12 blocks, 3 heads (1 global, 2 blockified); 5.74M params."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("vit_elfatt_tiny_patch16_224", pretrained, args, kwargs)


@register_model
def vit_elfatt_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-S with ELFATT: embed 384, 12 blocks, 6 heads (3 global, 3 blockified); 22.1M params."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("vit_elfatt_small_patch16_224", pretrained, args, kwargs)


@register_model
def vit_elfatt_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-B / ViT-B/16 with ELFATT: embed 768, 12 blocks, 12 heads (6 global, 6 blockified); 86.7M params."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("vit_elfatt_base_patch16_224", pretrained, args, kwargs)
