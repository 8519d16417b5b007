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
vertical-stripe group and the blockified softmax heads keep CSWin's horizontal stripes: ``BlockCount(b, 1)``,
``b`` stripes of ``H / b`` rows spanning the width. With that choice an official CSWin checkpoint maps onto the
model tensor for tensor (:func:`checkpoint_filter_fn`). Unlike CSWin's last stage (one group of full
attention), every stage here keeps the split; the last stage's default ``b = 1`` makes its block heads full
softmax attention.

Blocks are counted, not sized, as the paper's FLOPs show: ``block`` per stage is a fixed count (default ``b`` of
``(8, 4, 4, 1)`` stripes), so the stripes grow with the input and the sparse part costs ``O(m^2 / b)``. Pass sizes
instead (``block=(2, None)`` for stripes of 2 rows) for a cost linear in the tokens (high resolution).

``forward_features`` returns ``[B, C, H, W]`` after the final norm, as timm's hierarchical backbones (ConvNeXt,
MaxViT, ...) do; timm's Swin returns NHWC, but one convention serves both families here, and
``forward_intermediates(output_fmt="NHWC")`` gives channels-last maps.

Licence: MIT.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.models import generate_default_cfgs, register_model, register_notrace_function
from torch import Tensor

from elfatt._deprecated import count_block, deprecated_block
from elfatt.models._backbone import (
    ELFATTBackbone,
    MapRequest,
    build_hierarchical,
    elfatt_cfg,
    init_weights,
    per_stage,
)
from elfatt.models._blocks import ELFATTBlock
from elfatt.models.cswin_checkpoint import checkpoint_filter_fn
from elfatt.ops.blocks import BlockCount, BlockSpec, normalize_block
from elfatt.ops.checks import pair

__all__ = ["CSWinELFATT", "ELFATTStage", "ConvMerge", "PatchEmbed", "checkpoint_filter_fn"]


# The paper's blocks per stage, laid out by each family's block_grid, when none are given: Swin-T fits it, CSWin-T
# lies between it and (8, 4, 2, 1), the base models fit (4, 4, 4, 1) (see the variants).
DEFAULT_COUNTS = (8, 4, 4, 1)

# The stem's, the merges' and the final norm: LayerNorm over the channels of NCHW maps, with nn.LayerNorm's eps as
# in the official CSWin code.
map_norm = functools.partial(LayerNorm2d, eps=1e-5)


def _count(model: "CSWinELFATT", count: int | tuple[int, int]) -> BlockCount:
    """A deprecated ``num_blocks`` entry: ``b`` laid out by the family's ``block_grid``, or an ``(nh, nw)`` pair."""
    if isinstance(count, int) and not isinstance(count, bool):
        return BlockCount(*model.block_grid(count))
    return count_block(count)


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
    """One stage: optional :class:`ConvMerge`, then ``depth`` :class:`~elfatt.models._blocks.ELFATTBlock` on the
    map's tokens; NCHW in and out."""

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
            **block_kwargs: the rest of :class:`~elfatt.models._blocks.ELFATTBlock`'s arguments (and its attention's).
        """
        super().__init__()
        if not downsample and dim != out_dim:
            raise ValueError(f"a stage without merging keeps its channels, got dim={dim}, out_dim={out_dim}")
        dd = dict(device=device, dtype=dtype)
        self.downsample = ConvMerge(dim, out_dim, **dd) if downsample else nn.Identity()
        rates = drop_path if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            [
                ELFATTBlock(out_dim, num_heads, drop_path=rates[i], norm_layer=norm_layer, **dd, **block_kwargs)
                for i in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        batch, channels, height, width = x.shape
        x = x.flatten(2).transpose(1, 2).contiguous()
        for block in self.blocks:
            x = block(x, (height, width))
        return x.transpose(1, 2).reshape(batch, channels, height, width)


class CSWinELFATT(ELFATTBackbone):
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
        block: Sequence[BlockSpec] | BlockSpec | None = None,
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
        num_blocks: Sequence[int | tuple[int, int]] | int | tuple[int, int] | None = None,
        block_sizes: Sequence[BlockSpec] | BlockSpec | None = None,
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
            block: the softmax heads' blocks, per stage or one for all: the paper's fixed count (a
                :class:`~elfatt.ops.BlockCount`) or a fixed size (``(bh, None)`` for stripes of ``bh`` rows; costs
                linear in the tokens); :meth:`default_block` (8, 4, 4 and 1 blocks) when None.
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
            num_blocks: deprecated: ``b`` blocks per stage (laid out by :meth:`block_grid`) or ``(nh, nw)``.
            block_sizes: deprecated spelling of ``block`` for sizes.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"num_heads needs one entry per stage ({num_stages}), got {list(num_heads)}")
        self.check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.img_size = pair(img_size, "img_size")
        self.grad_checkpointing = False
        self.embed_dims = [embed_dim * 2**i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        blocks = self._stage_blocks(block, num_blocks, block_sizes, num_stages) or self.default_block(num_stages)
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
                    block=blocks[i],
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
    def block_grid(count: int) -> tuple[int, int]:
        """The ``(nh, nw)`` blocks of a stage given ``b`` blocks: CSWin-ELFATT cuts ``b`` horizontal stripes."""
        return (count, 1)

    def default_block(self, num_stages: int) -> list[BlockCount]:
        """The paper's 8, 4, 4 and 1 blocks of the four stages, laid out by :meth:`block_grid`."""
        return [BlockCount(*self.block_grid(count)) for count in per_stage(DEFAULT_COUNTS, num_stages, "block")]

    def _stage_blocks(
        self, block: object, num_blocks: object, block_sizes: object, num_stages: int
    ) -> list[BlockSpec] | None:
        """Every stage's block from ``block`` or its deprecated spellings; None when none is given."""

        def counts(value: object) -> list[BlockCount]:
            return [_count(self, count) for count in per_stage(value, num_stages, "num_blocks")]

        block = deprecated_block(block, dict(num_blocks=num_blocks, block_sizes=block_sizes), dict(num_blocks=counts))
        if block is None:
            return None
        return [normalize_block(spec) for spec in per_stage(block, num_stages, "block")]

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

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        *,
        block: Sequence[BlockSpec] | BlockSpec | None = None,
        num_blocks: Sequence[int | tuple[int, int]] | int | tuple[int, int] | None = None,
        block_sizes: Sequence[BlockSpec] | BlockSpec | None = None,
    ) -> None:
        """Set the nominal input size and, optionally, the blocks of every stage.

        Nothing in the model depends on the input size (no position embedding, no fixed windows), so a new
        ``img_size`` is only recorded. With a fixed block count the blocks grow with the input; pass ``block``
        (per stage or one for all; ``num_blocks`` and ``block_sizes`` are its deprecated spellings) to change them.
        """
        if img_size is not None:
            self.img_size = pair(img_size, "img_size")
        blocks = self._stage_blocks(block, num_blocks, block_sizes, len(self.stages))
        for stage, spec in zip(self.stages, blocks or (), strict=False):
            for layer in stage.blocks:
                layer.attn.block = spec

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, in_chans, H, W]`` to the final normalised feature map ``[B, C, H / 32, W / 32]``."""
        x = self.stages(self.patch_embed(x))
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``[B, C, h, w]`` and classify; ``pre_logits`` returns the pooled ``[B, C]`` features."""
        x = self.head_drop(x.mean(dim=(2, 3)) if self.global_pool == "avg" else x.permute(0, 2, 3, 1))
        if not pre_logits:
            x = self.head(x)
        return x if self.global_pool == "avg" else x.permute(0, 3, 1, 2)

    def collect_intermediates(self, x: Tensor, trunk: nn.Module, request: MapRequest) -> tuple[Tensor, list[Any]]:
        """The stages' maps for :meth:`~elfatt.models._backbone.ELFATTBackbone.forward_intermediates`."""
        if request.return_prefix_tokens:
            raise ValueError(f"{type(self).__name__} has no prefix tokens to return")
        last = len(self.stages) - 1
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(trunk):
            x = stage(x)
            if i in request.take_indices:
                out = self.norm(x) if request.norm and i == last else x
                intermediates.append(out if request.output_fmt == "NCHW" else out.permute(0, 2, 3, 1))
        return x, intermediates


# The base variants' 4, 4, 4 and 1 horizontal stripes.
BASE_BLOCK = [BlockCount(4, 1)] * 3 + [BlockCount(1, 1)]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return elfatt_cfg(**{"pool_size": (7, 7), "crop_pct": 0.9, **kwargs})


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
    args = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), block=BASE_BLOCK)
    return _create("cswin_elfatt_base_224", pretrained, args, kwargs)


@register_model
def cswin_elfatt_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CSWin-B-ELFATT at 384: the base model; a fixed block count makes its blocks grow with the input."""
    args = dict(img_size=384, embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), block=BASE_BLOCK)
    return _create("cswin_elfatt_base_384", pretrained, args, kwargs)
