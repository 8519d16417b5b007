"""nn.Modules over :func:`elfatt.ops.elfatt`: LePE and ``ELFATTAttention``, a drop-in for timm's ViT ``Attention``.

Deployment goes through ``torch.compile``, ``torch.export`` and ONNX (:mod:`elfatt.export`); the layer does not
script with TorchScript.
"""

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

from elfatt._deprecated import count_block, deprecated_block
from elfatt.ops import BlockCount, BlockSpec, elfatt, elfatt_sequence, global_head_count
from elfatt.ops.backends import BACKENDS
from elfatt.ops.blocks import normalize_block, resolve_block
from elfatt.ops.checks import check_size
from elfatt.ops.kernels import depthwise_conv

__all__ = ["LePE", "ELFATTAttention", "DEFAULT_BLOCK"]

DEFAULT_BLOCK = 8


class LePE(nn.Module):
    """Locally-enhanced positional encoding (CSWin): a depthwise ``k x k`` conv of V on its token grid."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            channels: ``heads * d`` of the values it convolves.
            kernel_size: odd side of the depthwise kernel.
            device, dtype: where and how the conv's parameters are made.
        """
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LePE kernel_size must be odd and >= 1, got {kernel_size}")
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, device=device, dtype=dtype
        )

    def forward(self, v: Tensor, size: tuple[int, int]) -> Tensor:
        """LePE of ``v`` ``[B, H * W, C]`` (channel ``head * d + j``) on the grid ``size``; ``[B, H * W, C]``."""
        height, width = check_size(size)
        if v.dim() != 3 or v.shape[1] != height * width:
            raise ValueError(f"v must be [B, H * W = {height * width}, C], got shape {tuple(v.shape)}")
        images = v.reshape(v.shape[0], height, width, v.shape[2]).contiguous()
        return depthwise_conv(images, self.conv.weight, self.conv.bias).reshape(v.shape)

    def parameters_pair(self) -> tuple[Tensor, Tensor | None]:
        """The conv's ``(weight, bias)``, as :func:`elfatt.ops.elfatt` takes a part's LePE."""
        return self.conv.weight, self.conv.bias


class ELFATTAttention(nn.Module):
    """ELFATT attention layer: ``[B, N, C]`` tokens on an ``(H, W)`` grid in, the same shape out.

    A drop-in for timm's ViT ``Attention`` (``qkv`` / ``proj`` linears, optional per-head ``q_norm`` / ``k_norm``)
    that also takes the grid size. ``split`` of the heads run global linear attention with LePE on the whole grid,
    the others exact softmax attention inside blocks with LePE per block; the heads are concatenated and
    projected. Tokens before the grid (a ViT's class token, registers) attend as :func:`elfatt.ops.elfatt` says of
    ``num_prefix_tokens``.

    ``block`` is a fixed size (``8``, ``(8, 16)``, ``(2, None)`` for stripes: linear cost in tokens) or a count
    (:class:`~elfatt.ops.BlockCount`, the paper's ``b`` blocks whose size grows with the grid); ``None`` gives
    ``DEFAULT_BLOCK`` (8 x 8 windows). It can be set later (the backbones' ``set_input_size`` does) and reads
    back as a ``(bh, bw)`` pair or a ``BlockCount``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        block: BlockSpec | None = None,
        split: float = 0.5,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        lepe_kernel: int = 3,
        fused_attn: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        num_blocks: int | tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim: channels ``C``.
            num_heads: heads; ``dim`` must divide by it.
            block: the softmax heads' blocks: a size ``(bh, bw)`` or an int, ``None`` sides for stripes, or a
                :class:`~elfatt.ops.BlockCount`; ``DEFAULT_BLOCK`` when None.
            split: fraction of heads that are global linear heads; ``num_heads * split`` must be whole.
            qkv_bias: bias in the qkv projection.
            qk_norm: normalise queries and keys per head (timm's ``qk_norm``) before attention.
            norm_layer: the qk norm, over the head dim.
            attn_drop: dropout on the block heads' attention probabilities.
            proj_drop: dropout after the output projection.
            lepe_kernel: side of the LePE depthwise kernels.
            fused_attn: block heads through ``F.scaled_dot_product_attention`` when True, plain matmuls when False.
            backend: kernels of the global heads: ``"torch"``, ``"triton"``, or ``"auto"`` (Triton on CUDA when
                installed).
            device, dtype: where and how the parameters are made (timm's ``create_model(device=, dtype=)``).
            num_blocks: deprecated, ``block=BlockCount(nh, nw)``.
        """
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        block = deprecated_block(block, {"num_blocks": num_blocks}, {"num_blocks": count_block})
        self.block = DEFAULT_BLOCK if block is None else block
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.split = split
        self.num_global_heads = global_head_count(num_heads, split)
        self.attn_drop = attn_drop
        self.fused_attn = fused_attn
        self.backend = backend
        factory = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        self.q_norm = norm_layer(self.head_dim, **factory) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **factory) if qk_norm else nn.Identity()
        global_channels = self.num_global_heads * self.head_dim
        self.global_lepe = LePE(global_channels, lepe_kernel, **factory) if global_channels else None
        self.block_lepe = LePE(dim - global_channels, lepe_kernel, **factory) if dim - global_channels else None
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def block(self) -> tuple[int | None, int | None] | BlockCount:
        """The softmax heads' blocks: a ``(bh, bw)`` size (None for a whole side) or a ``BlockCount``."""
        return self._block

    @block.setter
    def block(self, block: BlockSpec) -> None:
        self._block = normalize_block(block)

    @property
    def num_blocks(self) -> tuple[int, int] | None:
        """Deprecated: the block count ``(nh, nw)`` where ``block`` is a ``BlockCount``, else None."""
        warnings.warn("num_blocks is deprecated; read block (a BlockCount for a count)", DeprecationWarning, 2)
        return tuple(self._block) if isinstance(self._block, BlockCount) else None

    @num_blocks.setter
    def num_blocks(self, num_blocks: int | tuple[int, int] | None) -> None:
        warnings.warn("num_blocks is deprecated; set block = elfatt.BlockCount(nh, nw)", DeprecationWarning, 2)
        if num_blocks is not None:
            self.block = count_block(num_blocks)

    def block_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The concrete ``(bh, bw)`` block this layer uses on the grid ``size``."""
        return resolve_block(size, self._block)

    def forward(
        self, x: Tensor, size: tuple[int, int], num_prefix_tokens: int = 0, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Attend ``x`` ``[B, P + H * W, C]``: ``P = num_prefix_tokens`` tokens, then the grid ``size=(H, W)``
        row-major; returns the same shape.

        ``key_padding_mask`` (``[B, N]`` bool, True at padded positions) is for sequences, a ``(1, N)`` grid with no
        prefix: padded tokens take no part in either part and their outputs are zero (see
        :func:`~elfatt.ops.elfatt_sequence`); the blocks are ``block_size(size)``'s width long.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, N, C={self.dim}], got shape {shape}")
        batch, tokens, _ = x.shape
        # [B, N, heads, d] views of the qkv output: the heads are never permuted to the front
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).unbind(2)
        options = dict(
            num_global_heads=self.num_global_heads,
            global_lepe=None if self.global_lepe is None else self.global_lepe.parameters_pair(),
            block_lepe=None if self.block_lepe is None else self.block_lepe.parameters_pair(),
            dropout_p=self.attn_drop if self.training else 0.0,
            fused=self.fused_attn,
            backend=self.backend,
        )
        if key_padding_mask is None:
            out = elfatt(
                self.q_norm(q), self.k_norm(k), v, size, block=self._block, num_prefix_tokens=num_prefix_tokens,
                **options,
            )  # fmt: skip
        else:
            if tuple(size) != (1, tokens) or num_prefix_tokens:
                raise ValueError(
                    f"key_padding_mask is for sequences: size (1, {tokens}) and no prefix tokens, got size {size} "
                    f"and {num_prefix_tokens} prefix tokens"
                )
            block = self.block_size((1, tokens))[1]
            out = elfatt_sequence(
                self.q_norm(q), self.k_norm(k), v, block=block, key_padding_mask=key_padding_mask, **options
            )
        return self.proj_drop(self.proj(out.reshape(batch, tokens, self.dim)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, global_heads={self.num_global_heads}, block={self.block}"
