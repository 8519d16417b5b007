"""CSWin-ELFATT: the CSWin Transformer with ELFATT attention in place of its cross-shaped window attention.

Papers:
    ELFATT: Efficient Linear Fast Attention for Vision Transformers. Chong Wu, Maolin Che, Renjie Xu,
    Zhuoheng Ran, Hong Yan; ACM MM 2025. https://arxiv.org/abs/2501.06098
    CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows. Xiaoyi Dong et al.;
    CVPR 2022. https://arxiv.org/abs/2107.00652

The layout is CSWin's (microsoft/CSWin-Transformer, MIT licence): a 7x7 stride-4 conv stem with padding 2 and
LayerNorm; four stages of pre-norm blocks (attention, then an MLP of ratio 4, each residual branch with
stochastic depth); a 3x3 stride-2 conv and LayerNorm merging tokens between stages; a final LayerNorm, global
average pooling and a linear head. There is no absolute position embedding (LePE gives position), so any input
size works: the stem and the merging convs take any size, and the attention pads blocks that do not divide.

Attention. A CSWin block splits its heads into two groups, the first ``C/2`` channels attending in vertical
stripes (the official ``attns.0``) and the last ``C/2`` in horizontal stripes (``attns.1``). ELFATT keeps one
group of sparse heads, all with one blockify, and makes the rest global linear heads. The paper does not say
which of CSWin's groups became global; here the global linear heads take the place, channels and LePE of the
vertical-stripe group and the blockified softmax heads keep CSWin's horizontal stripes: ``num_blocks=(b, 1)``,
``b`` stripes of ``H / b`` rows spanning the width. With that choice an official CSWin checkpoint maps onto the
model tensor for tensor (:func:`checkpoint_filter_fn`). Unlike CSWin's last stage (one group of full
attention), every stage here keeps the split; the last stage's default ``b = 1`` makes its block heads full
softmax attention.

Blocks are counted, not sized, as the paper's FLOPs show: ``num_blocks`` per stage is fixed (default
``(8, 4, 4, 1)``), so the stripes grow with the input and the sparse part costs ``O(m^2 / b)``. Pass
``block_sizes`` instead for fixed-size stripes whose cost is linear in the tokens (high resolution).

``forward_features`` returns ``[B, C, H, W]`` after the final norm, as timm's hierarchical backbones (ConvNeXt,
MaxViT, ...) do; timm's Swin returns NHWC, but one convention serves both families here, and
``forward_intermediates(output_fmt="NHWC")`` gives channels-last maps.

Licence: MIT.
"""

import functools
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    register_notrace_function,
    register_notrace_module,
)
from timm.models._features import feature_take_indices
from torch import Tensor

from elfatt._checks import pair
from elfatt.blocks import BlockSpec, block_from_count, resolve_block
from elfatt.modules import ELFATTAttention

__all__ = ["CSWinELFATT", "ELFATTStage", "ELFATTBlock", "ConvMerge", "PatchEmbed", "checkpoint_filter_fn"]

BlockCount = int | tuple[int, int]

# Blocks of the softmax heads per stage when neither a count nor a size is given: Swin-T fits it, CSWin-T lies
# between it and (8, 4, 2, 1), the base models fit (4, 4, 4, 1) (see the variants).
DEFAULT_NUM_BLOCKS = (8, 4, 4, 1)

# FX feature extraction traces around the attention, whose block layout depends on the grid's sizes.
register_notrace_module(ELFATTAttention)

# The stem's, the merges' and the final norm: LayerNorm over the channels of NCHW maps, with nn.LayerNorm's eps as
# in the official CSWin code.
map_norm = functools.partial(LayerNorm2d, eps=1e-5)


def per_stage(value: Any, num_stages: int, what: str) -> list[Any]:
    """``value`` for each stage: a list or tuple of ``num_stages`` entries is per stage, anything else (a scalar,
    or a block pair when there are not two stages) is repeated for every stage."""
    if isinstance(value, (list, tuple)) and len(value) == num_stages:
        return list(value)
    if isinstance(value, (list, tuple)) and not (len(value) == 2 and _is_pair(value)):
        raise ValueError(f"{what} needs one entry per stage ({num_stages}) or one for all, got {value!r}")
    return [value] * num_stages


def _is_pair(value: Sequence[Any]) -> bool:
    return all(side is None or (isinstance(side, int) and not isinstance(side, bool)) for side in value)


def stage_indices(num_features: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``, with a ``ValueError`` (not an assert) for indices out of range."""
    try:
        return feature_take_indices(num_features, indices)
    except AssertionError as error:
        raise ValueError(f"indices {indices!r}: {error}") from None


class ELFATTBlock(nn.Module):
    """Pre-norm transformer block with ELFATT attention: ``[B, H, W, C]`` in and out."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_blocks: BlockCount | None = None,
        block: BlockSpec | None = None,
        split: float = 0.5,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        lepe_kernel: int = 3,
        fused_attn: bool = True,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            num_blocks: blocks ``(nh, nw)`` of the softmax heads (the paper's fixed count).
            block: instead, a fixed block size ``(bh, bw)``.
            split: fraction of heads that are global linear heads.
            mlp_ratio: MLP hidden width over ``dim``.
            qkv_bias: bias in the qkv projection.
            proj_drop: dropout after the attention projection and in the MLP.
            attn_drop: dropout on the block heads' attention probabilities.
            drop_path: stochastic depth rate of both residual branches.
            lepe_kernel: side of the LePE depthwise kernels.
            fused_attn: block heads through ``F.scaled_dot_product_attention``.
            norm_layer: normalisation over channels.
            act_layer: MLP activation.
            device, dtype: where and how the parameters are made.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = ELFATTAttention(
            dim,
            num_heads,
            block=block,
            num_blocks=num_blocks,
            split=split,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            lepe_kernel=lepe_kernel,
            fused_attn=fused_attn,
            **dd,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = x + self.drop_path1(self.attn(self.norm1(x), (height, width)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(batch, height, width, channels)


@register_notrace_function
@torch.jit.ignore
def check_images(x: Tensor, in_chans: int, smallest: int) -> None:
    """Check that ``x`` is an image batch ``[B, in_chans, H, W]`` with sides of at least ``smallest`` pixels."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images [B, {in_chans}, H, W], got shape {tuple(x.shape)}")
    if min(x.shape[2:]) < smallest:
        raise ValueError(f"images must be at least {smallest}x{smallest} pixels, got {tuple(x.shape[2:])}")


class PatchEmbed(nn.Module):
    """CSWin's stem: a 7x7 stride-4 conv with padding 2, then LayerNorm; NCHW images in, an NCHW map out.

    Any input of at least 3x3 pixels works; a side ``s`` becomes ``(s - 3) // 4 + 1`` (56 at 224).
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        *,
        kernel_size: int = 7,
        stride: int = 4,
        padding: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.smallest = kernel_size - 2 * padding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding, device=device, dtype=dtype)
        self.norm = map_norm(embed_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, self.in_chans, self.smallest)
        return self.norm(self.proj(x))


class ConvMerge(nn.Module):
    """CSWin's token merging: a 3x3 stride-2 conv with padding 1, then LayerNorm; NCHW in and out.

    Each side becomes ``ceil(side / 2)``, so odd sizes work.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, 2, 1, device=device, dtype=dtype)
        self.norm = map_norm(out_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class ELFATTStage(nn.Module):
    """One stage: optional :class:`ConvMerge`, then ``depth`` :class:`ELFATTBlock`; NCHW in and out."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        *,
        downsample: bool = True,
        drop_path: Sequence[float] | float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **block_kwargs: Any,
    ) -> None:
        """
        Args:
            dim: input channels.
            out_dim: channels of the blocks (``dim`` unless merging).
            depth: number of blocks.
            num_heads: attention heads.
            downsample: start with a :class:`ConvMerge` halving each side.
            drop_path: stochastic depth rate, one per block or one for all.
            norm_layer: normalisation over channels in the blocks.
            device, dtype: where and how the parameters are made.
            **block_kwargs: the rest of :class:`ELFATTBlock`'s arguments.
        """
        super().__init__()
        self.grad_checkpointing = False
        if not downsample and dim != out_dim:
            raise ValueError(f"a stage without merging keeps its channels, got dim={dim}, out_dim={out_dim}")
        dd = dict(device=device, dtype=dtype)
        self.downsample = ConvMerge(dim, out_dim, **dd) if downsample else nn.Identity()
        rates = drop_path if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.Sequential(
            *[
                ELFATTBlock(out_dim, num_heads, drop_path=rates[i], norm_layer=norm_layer, **dd, **block_kwargs)
                for i in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class CSWinELFATT(nn.Module):
    """CSWin-ELFATT: a four-stage hierarchical transformer with ELFATT attention (see the module docstring).

    Subclasses change the layout of the blocks (:class:`~elfatt.models.swin_elfatt.SwinELFATT`).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 4, 18, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        num_blocks: Sequence[BlockCount] | BlockCount | None = None,
        block_sizes: Sequence[BlockSpec] | BlockSpec | None = None,
        split: Sequence[float] | float = 0.5,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
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
            img_size: nominal input size, used only as metadata (any size works, see :meth:`set_input_size`).
            in_chans: image channels.
            num_classes: classes of the head; 0 for none.
            global_pool: ``"avg"`` or ``""`` (no pooling: the head is applied at every location).
            embed_dim: channels of the first stage; each later stage doubles them.
            depths: blocks per stage.
            num_heads: attention heads per stage.
            num_blocks: the paper's fixed number of blocks of the softmax heads per stage, an int ``b``
                (laid out by :meth:`block_grid`: ``b`` horizontal stripes here) or an ``(nh, nw)`` pair;
                ``(8, 4, 4, 1)`` when neither this nor ``block_sizes`` is given.
            block_sizes: instead of ``num_blocks``, a fixed block size per stage (``(bh, None)`` for stripes
                of ``bh`` rows); costs are then linear in the tokens.
            split: fraction of global linear heads, per stage or for all.
            mlp_ratio: MLP hidden width over the channels.
            qkv_bias: bias in the qkv projections.
            drop_rate: dropout before the head.
            proj_drop_rate: dropout after attention projections and in MLPs.
            attn_drop_rate: dropout on the block heads' attention probabilities.
            drop_path_rate: stochastic depth rate, rising linearly over the blocks to this value.
            lepe_kernel: side of the LePE depthwise kernels.
            fused_attn: block heads through ``F.scaled_dot_product_attention`` (plain matmuls when False).
            norm_layer: normalisation over channels in the blocks (the stem's, the merges' and the final norm are
                LayerNorms over the channels of NCHW maps).
            act_layer: MLP activation.
            device, dtype: where and how the parameters are made (timm's ``create_model(device=, dtype=)``).
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"num_heads needs one entry per stage ({num_stages}), got {list(num_heads)}")
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if num_blocks is not None and block_sizes is not None:
            raise ValueError("give at most one of num_blocks (a block count per stage) and block_sizes (a block size)")
        if block_sizes is None and num_blocks is None:
            num_blocks = DEFAULT_NUM_BLOCKS
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.img_size = pair(img_size, "img_size")
        self.embed_dims = [embed_dim * 2**i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        block_counts = None if num_blocks is None else per_stage(num_blocks, num_stages, "num_blocks")
        blocks = None if block_sizes is None else per_stage(block_sizes, num_stages, "block_sizes")
        splits = per_stage(split, num_stages, "split")

        self.patch_embed = PatchEmbed(in_chans, embed_dim, **dd)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, in_dim = [], embed_dim
        self.feature_info = []
        for i in range(num_stages):
            stages.append(
                ELFATTStage(
                    in_dim,
                    self.embed_dims[i],
                    depths[i],
                    num_heads[i],
                    downsample=i > 0,
                    drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    norm_layer=norm_layer,
                    num_blocks=None if block_counts is None else self.block_grid(block_counts[i]),
                    block=None if blocks is None else blocks[i],
                    split=splits[i],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    lepe_kernel=lepe_kernel,
                    fused_attn=fused_attn,
                    act_layer=act_layer,
                    **dd,
                )
            )
            in_dim = self.embed_dims[i]
            self.feature_info.append(dict(num_chs=in_dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = map_norm(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)

    @staticmethod
    def block_grid(count: BlockCount) -> tuple[int, int]:
        """The ``(nh, nw)`` blocks of a stage given ``b`` blocks: CSWin-ELFATT cuts ``b`` horizontal stripes."""
        if isinstance(count, int) and not isinstance(count, bool):
            return (count, 1)
        return tuple(count)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: none, there is no position embedding."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters by depth (timm's layer-wise learning-rate decay)."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (``torch.utils.checkpoint``) to save memory."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (0 for none), optionally changing the pool."""
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_classifier(self.num_features, num_classes, self)

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        *,
        num_blocks: Sequence[BlockCount] | BlockCount | None = None,
        block_sizes: Sequence[BlockSpec] | BlockSpec | None = None,
    ) -> None:
        """Set the nominal input size and, optionally, the blocks of every stage.

        Nothing in the model depends on the input size (no position embedding, no fixed windows), so a new
        ``img_size`` is only recorded. With a fixed block count the blocks grow with the input; pass
        ``num_blocks`` (a count per stage) or ``block_sizes`` (a size per stage) to change them for a new size.
        """
        if img_size is not None:
            self.img_size = pair(img_size, "img_size")
        if num_blocks is not None and block_sizes is not None:
            raise ValueError("give at most one of num_blocks and block_sizes")
        if num_blocks is None and block_sizes is None:
            return
        num_stages = len(self.stages)
        counts = None if num_blocks is None else per_stage(num_blocks, num_stages, "num_blocks")
        sizes = None if block_sizes is None else per_stage(block_sizes, num_stages, "block_sizes")
        for i, stage in enumerate(self.stages):
            grid = None if counts is None else self.block_grid(counts[i])
            if grid is not None:
                block_from_count((1, 1), grid)
            else:
                resolve_block((1, 1), sizes[i])
            for block in stage.blocks:
                block.attn.num_blocks, block.attn.block = grid, None if sizes is None else sizes[i]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, in_chans, H, W]`` to the final normalised feature map ``[B, C, H / 32, W / 32]``."""
        x = self.stages(self.patch_embed(x))
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``[B, C, h, w]`` and classify; ``pre_logits`` returns the pooled ``[B, C]`` features."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        else:
            x = x.permute(0, 2, 3, 1)
        x = self.head_drop(x)
        if pre_logits:
            return x if self.global_pool == "avg" else x.permute(0, 3, 1, 2)
        x = self.head(x)
        return x if self.global_pool == "avg" else x.permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Per-stage feature maps, timm's ``forward_intermediates``.

        Args:
            x: images ``[B, in_chans, H, W]``.
            indices: stages to return: None for all, ``n`` for the last ``n``, or a list of indices.
            norm: apply the final norm to the last stage's map when it is returned.
            stop_early: accepted for timm's signature; with ``intermediates_only`` the stages after the last one
                asked for never run, without it all run so that the final features are complete.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: return only the list of maps.

        Returns:
            The maps, or ``(final features [B, C, h, w], maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = stage_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if not stop_early and not intermediates_only else self.stages[: max_index + 1]
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                out = self.norm(x) if norm and i == last else x
                intermediates.append(out if output_fmt == "NCHW" else out.permute(0, 2, 3, 1))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` and, optionally, the final norm and the head.

        The final norm is dropped whenever stages are, since it fits only the last stage's channels.
        """
        take_indices, max_index = stage_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:
            prune_norm = True
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def init_weights(module: nn.Module) -> None:
    """timm's init of linears (truncated normal 0.02, zero bias) and LayerNorms (ones, zeros)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def new_classifier(num_features: int, num_classes: int, model: nn.Module) -> nn.Module:
    """A freshly initialised linear head (``nn.Identity`` for 0 classes) with the model's device, dtype and mode."""
    if num_classes <= 0:
        return nn.Identity().train(model.training)
    reference = next(model.parameters(), None)
    factory = {} if reference is None else dict(device=reference.device, dtype=reference.dtype)
    head = nn.Linear(num_features, num_classes, **factory)
    init_weights(head)
    return head.train(model.training)


# Official CSWin names (microsoft/CSWin-Transformer, models/cswin.py) -> ours, for everything but the LePE convs.
_CSWIN_RENAMES = [
    (re.compile(r"^stage1_conv_embed\.0\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^stage1_conv_embed\.2\.(weight|bias)$"), r"patch_embed.norm.\1"),
    (re.compile(r"^merge(\d+)\.(conv|norm)\.(weight|bias)$"), r"stages.\1.downsample.\2.\3"),
    (re.compile(r"^stage(\d+)\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"), None),
    (re.compile(r"^stage(\d+)\.(\d+)\.(qkv|proj)\.(weight|bias)$"), None),
    (re.compile(r"^(norm|head)\.(weight|bias)$"), r"\1.\2"),
]
_CSWIN_LEPE = re.compile(r"^stage(\d+)\.(\d+)\.attns\.(\d)\.get_v\.(weight|bias)$")
_ADAPTED_BY_TIMM = ("head.", "patch_embed.proj.")
_CSWIN_ONLY = re.compile(r"^(stage\d+[._]|merge\d+\.)")


def _rename_cswin(key: str) -> str | None:
    for pattern, target in _CSWIN_RENAMES:
        match = pattern.match(key)
        if match is None:
            continue
        if target is not None:
            return match.expand(target)
        stage, block, name, kind = match.groups()
        attn = "attn." if name in ("qkv", "proj") else ""
        return f"stages.{int(stage) - 1}.blocks.{block}.{attn}{name}.{kind}"
    return None


def _unwrap(state_dict: dict[str, Any], use_ema: bool) -> dict[str, Tensor]:
    keys = ("state_dict_ema", "model_ema") if use_ema else ("model", "state_dict")
    for key in keys:
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    else:
        if use_ema:
            raise ValueError(f"use_ema=True but the checkpoint has none of {keys}: {sorted(state_dict)[:8]}")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def checkpoint_filter_fn(
    state_dict: dict[str, Any],
    model: CSWinELFATT,
    *,
    strict: bool = True,
    use_ema: bool = False,
    for_timm_loader: bool = False,
) -> dict[str, Tensor]:
    """Map a checkpoint in the official CSWin code's names onto a :class:`CSWinELFATT`.

    Names follow microsoft/CSWin-Transformer: ``stage1_conv_embed.{0,2}`` (stem conv, norm), ``stage{s}.{j}``
    blocks with ``norm1``, ``qkv``, ``attns.{0,1}.get_v`` (LePE of the vertical, horizontal stripe group),
    ``proj``, ``norm2``, ``mlp.fc{1,2}``, ``merge{s}.{conv,norm}``, then ``norm`` and ``head``. ``attns.0`` maps to
    the global heads' LePE and ``attns.1`` to the block heads' (see the module docstring); a stage with a single
    group (CSWin's last stage, ``attns.0`` over all channels) has its conv cut in two along the channels.
    A checkpoint wrapped in ``model`` / ``state_dict`` (or, with ``use_ema``, ``state_dict_ema``) is unwrapped,
    a DDP ``module.`` prefix dropped, and a state dict already in this model's names returned as it is.

    Args:
        state_dict: the loaded checkpoint.
        model: the model it is for.
        strict: raise on checkpoint keys that map nowhere, model keys the checkpoint lacks, and shape
            mismatches; when False, warn, drop the mismatched tensors and return what maps.
        use_ema: take the EMA weights of a training checkpoint.
        for_timm_loader: leave a classifier or stem of another shape (``head``, ``patch_embed.proj``) for timm's
            ``load_pretrained`` to drop or adapt to ``num_classes`` / ``in_chans``, as ``pretrained=True`` does.

    Returns:
        A state dict for ``model.load_state_dict``.

    Raises:
        ValueError: with ``strict``, listing unexpected keys, missing keys and shape mismatches.
    """
    state_dict = _unwrap(state_dict, use_ema)
    target = model.state_dict()
    if not any(_CSWIN_ONLY.match(k) for k in state_dict):
        # Already in this model's names (``norm`` and ``head`` are named alike in both).
        return state_dict
    out: dict[str, Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        lepe = _CSWIN_LEPE.match(key)
        if lepe is None:
            new_key = _rename_cswin(key)
            if new_key is None:
                unexpected.append(key)
            else:
                out[new_key] = value
            continue
        stage, block, group, kind = lepe.groups()
        prefix = f"stages.{int(stage) - 1}.blocks.{block}.attn."
        global_key, block_key = f"{prefix}global_lepe.conv.{kind}", f"{prefix}block_lepe.conv.{kind}"
        if group == "1":
            out[block_key] = value
        elif (
            global_key in target
            and block_key in target
            and value.shape[0] == (target[global_key].shape[0] + target[block_key].shape[0])
        ):
            # CSWin's single-group stage: one LePE conv over all channels, global heads' channels first.
            out[global_key], out[block_key] = value.split([target[global_key].shape[0], target[block_key].shape[0]])
        elif group == "0":
            out[global_key] = value
        else:
            unexpected.append(key)
    unexpected += [k for k in out if k not in target]
    missing = [k for k in target if k not in out]
    # With timm's loader, a classifier for other classes or a stem for other channels is its to drop or adapt.
    adapted = _ADAPTED_BY_TIMM if for_timm_loader else ()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in out.items()
        if k in target and v.shape != target[k].shape and not k.startswith(adapted)
    ]
    problems = []
    for what, keys in (("unexpected (mapped nowhere)", unexpected), ("missing", missing), ("mismatched", mismatched)):
        if keys:
            shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
            problems.append(f"{len(keys)} {what}: {shown}")
    if problems:
        message = "CSWin checkpoint does not fit the model: " + "; ".join(problems)
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return {k: v for k, v in out.items() if k in target and (v.shape == target[k].shape or k.startswith(adapted))}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
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
        **kwargs,
    }


# Read by timm's register_model at decoration time, so defined before the entrypoints.
default_cfgs = generate_default_cfgs(
    {
        "cswin_elfatt_tiny_224": _cfg(
            notes=("The authors publish cswin_elfatt_tiny_224.pth; load it with pretrained_cfg_overlay=dict(file=...)",)
        ),
        "cswin_elfatt_small_224": _cfg(),
        "cswin_elfatt_base_224": _cfg(),
        "cswin_elfatt_base_384": _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    }
)


def build_hierarchical(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    args: dict[str, Any],
    kwargs: dict[str, Any],
    pretrained_filter_fn: Callable[..., dict[str, Tensor]] | None = None,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a four-stage variant: its ``args`` overridden by the caller's
    ``kwargs`` (a caller's ``block_sizes`` replaces the variant's ``num_blocks``), features from every stage."""
    if kwargs.get("block_sizes") is not None and "num_blocks" not in kwargs:
        args = {k: v for k, v in args.items() if k != "num_blocks"}
    kwargs = {**args, **kwargs}
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _create(variant: str, pretrained: bool, args: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    filter_fn = functools.partial(checkpoint_filter_fn, for_timm_loader=True)
    return build_hierarchical(CSWinELFATT, variant, pretrained, args, kwargs, filter_fn)


@register_model
def cswin_elfatt_tiny_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CSWin-T-ELFATT: depths (2, 4, 18, 1), embed 64, heads (2, 4, 8, 16); 20.4M params."""
    args = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16))
    return _create("cswin_elfatt_tiny_224", pretrained, args, kwargs)


@register_model
def cswin_elfatt_small_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CSWin-S layout with ELFATT: depths (2, 4, 32, 2), embed 64, heads (2, 4, 8, 16); not in the paper."""
    args = dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16))
    return _create("cswin_elfatt_small_224", pretrained, args, kwargs)


@register_model
def cswin_elfatt_base_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CSWin-B-ELFATT: depths (3, 6, 29, 2), embed 96, heads (4, 8, 16, 32), blocks (4, 4, 4, 1); 73M params."""
    args = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), num_blocks=(4, 4, 4, 1))
    return _create("cswin_elfatt_base_224", pretrained, args, kwargs)


@register_model
def cswin_elfatt_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CSWin-B-ELFATT at 384: the base model; a fixed block count makes its blocks grow with the input."""
    args = dict(img_size=384, embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), num_blocks=(4, 4, 4, 1))
    return _create("cswin_elfatt_base_384", pretrained, args, kwargs)
