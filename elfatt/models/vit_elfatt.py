"""ViT-ELFATT: the DeiT / ViT layout with ELFATT attention.

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
that lie on no grid. :class:`~elfatt.modules.ELFATTAttention` (``num_prefix_tokens``) treats them so that they
see every token and cost little:

- global linear heads attend over all ``P + N`` tokens (prefix tokens are keys and values like any other);
  LePE, a convolution on the grid, is added to the ``N`` grid tokens only;
- blockified softmax heads: each grid token attends with exact softmax inside its block of the grid, exactly as
  without prefix tokens (no mask, one FlashAttention-friendly SDPA call); each prefix query attends with exact
  softmax to all ``P + N`` keys, which is ``O(P N)``, linear in the tokens since ``P`` is tiny.

So grid tokens reach the prefix tokens through the global heads only, and the class token gathers from the
whole image in every head. With ``P = 0`` the layer is :class:`~elfatt.modules.ELFATTAttention` exactly.

Heads. Half of the heads are global linear heads; with an odd count (DeiT-Ti has 3) the global heads are
``floor(heads / 2)``: 1 of 3, and 2 blockified heads. Blocks are counted, as in the paper: ``block=BlockCount(2, 2)``
by default, four 7x7 windows at 224 (Swin-ELFATT's 14x14 stage uses the same four), growing with the input.
Pass a size (``block=8``) for fixed-size windows whose cost is linear in the tokens.

:func:`~elfatt.models.timm_vit_patch.patch_timm_vit` swaps the attention of an existing timm
``VisionTransformer`` for ELFATT in place instead, keeping its pretrained weights.

Licence: MIT.
"""

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_function
from torch import Tensor

from elfatt._deprecated import count_block, deprecated_block
from elfatt.models._backbone import ELFATTBackbone, MapRequest, check_build_args, elfatt_cfg, init_weights
from elfatt.models._blocks import ELFATTBlock
from elfatt.ops.blocks import BlockCount, BlockSpec, normalize_block
from elfatt.ops.checks import half_split, pair

__all__ = ["VisionTransformerELFATT", "PatchEmbed", "checkpoint_filter_fn"]

# Blocks of the softmax heads when none are given: four windows, 7x7 at 224.
DEFAULT_BLOCK = BlockCount(2, 2)


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


class VisionTransformerELFATT(ELFATTBackbone):
    """ViT / DeiT with ELFATT attention (see the module docstring); timm's ``VisionTransformer`` contract."""

    trunk_name = "blocks"
    global_pools = ("token", "avg", "")
    output_fmts = ("NCHW", "NHWC", "NLC")
    norm_fits_last_only = False

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
        block: BlockSpec | None = None,
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
        num_blocks: int | tuple[int, int] | None = None,
        block_size: BlockSpec | None = None,
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
            block: the softmax heads' blocks: the paper's fixed count (a :class:`~elfatt.ops.BlockCount`,
                ``BlockCount(2, 2)`` when None) or a fixed size (an int or ``(bh, bw)``: costs linear in tokens).
            split: fraction of global linear heads; None for half, rounded down (:func:`~elfatt.ops.checks.half_split`).
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
            num_blocks, block_size: deprecated spellings of ``block``.
            device, dtype: where and how the parameters are made (timm's ``create_model(device=, dtype=)``).
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.check_pool(global_pool)
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if reg_tokens < 0:
            raise ValueError(f"reg_tokens must be >= 0, got {reg_tokens}")
        block = deprecated_block(
            block, dict(num_blocks=num_blocks, block_size=block_size), dict(num_blocks=count_block)
        )
        block = DEFAULT_BLOCK if block is None else block
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
                ELFATTBlock(
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
                    block=block,
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

    def check_pool(self, global_pool: str) -> None:
        """Raise ValueError unless ``global_pool`` is ``"token"`` (with a class token), ``"avg"`` or ``""``."""
        super().check_pool(global_pool)
        if global_pool == "token" and getattr(self, "cls_token", True) is None:
            raise ValueError("global_pool='token' needs a class token")

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        *,
        block: BlockSpec | None = None,
        num_blocks: int | tuple[int, int] | None = None,
        block_size: BlockSpec | None = None,
    ) -> None:
        """Resize the position embedding to a new nominal input size and, optionally, set the blocks.

        Other sizes work without this (the embedding is resized on the fly); setting it makes the resized
        embedding the parameter, as timm's ``set_input_size`` does. With a fixed block count the blocks grow with
        the input; pass ``block`` to change them (``num_blocks`` and ``block_size`` are its deprecated spellings).
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
        block = deprecated_block(
            block, dict(num_blocks=num_blocks, block_size=block_size), dict(num_blocks=count_block)
        )
        if block is None:
            return
        block = normalize_block(block)
        for layer in self.blocks:
            layer.attn.block = block

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

    def collect_intermediates(self, x: Tensor, trunk: nn.Module, request: MapRequest) -> tuple[Tensor, list[Any]]:
        """The blocks' grid features for :meth:`~elfatt.models._backbone.ELFATTBackbone.forward_intermediates`;
        the prefix tokens are never part of the maps."""
        x, (height, width) = self._embed(x)
        intermediates = []
        for i, block in enumerate(trunk):
            x = block(x, (height, width), self.num_prefix_tokens)
            if i not in request.take_indices:
                continue
            out = self.norm(x) if request.norm else x
            prefix, grid = out[:, : self.num_prefix_tokens], out[:, self.num_prefix_tokens :]
            if request.output_fmt != "NLC":
                grid = grid.reshape(grid.shape[0], height, width, -1)
            if request.output_fmt == "NCHW":
                grid = grid.permute(0, 3, 1, 2).contiguous()
            intermediates.append((grid, prefix) if request.return_prefix_tokens else grid)
        return x, intermediates


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
    notes = ("No ELFATT weights; start from DeiT / timm ViT weights with checkpoint_filter_fn and fine-tune.",)
    return elfatt_cfg(**{"pool_size": None, "crop_pct": 0.875, "notes": notes, **kwargs})


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
    check_build_args({**args, **kwargs}, int({**args, **kwargs}.get("depth", 12)), "block")
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
