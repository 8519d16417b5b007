"""nn.Modules over :mod:`elfatt.functional`: LePE and ``ELFATTAttention``, a drop-in for timm's ViT ``Attention``."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from elfatt._checks import check_size
from elfatt.backends import BACKENDS
from elfatt.blocks import BlockSpec, block_from_count, resolve_block
from elfatt.functional import elfatt, global_head_count, lepe

__all__ = ["LePE", "ELFATTAttention", "DEFAULT_BLOCK"]

DEFAULT_BLOCK = 8


class LePE(nn.Module):
    """Locally-enhanced positional encoding (CSWin): a depthwise ``k x k`` conv of V on its token grid."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        """
        Args:
            channels: ``heads * d`` of the values it convolves.
            kernel_size: odd side of the depthwise kernel.
        """
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LePE kernel_size must be odd and >= 1, got {kernel_size}")
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, v: Tensor, size: tuple[int, int], block: BlockSpec | None = None) -> Tensor:
        """LePE of ``v`` ``[B, heads, N, d]`` on the grid ``size``, per block when ``block`` is given."""
        return lepe(v, size, self.conv.weight, self.conv.bias, block=block)


class ELFATTAttention(nn.Module):
    """ELFATT attention layer: ``[B, N, C]`` tokens on an ``(H, W)`` grid in, the same shape out.

    A drop-in for timm's ViT ``Attention`` that also takes the grid size. ``split`` of the heads run global
    linear attention with LePE on the whole grid, the others exact softmax attention inside blocks with LePE
    per block; the heads are concatenated and projected.

    The block is either a fixed size (``block``, linear cost in tokens) or a fixed count (``num_blocks``,
    the paper's ``b`` blocks whose size grows with the grid); give at most one. Neither gives
    ``block=DEFAULT_BLOCK`` (8 x 8 windows).
    """

    fused_attn: bool

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        block: BlockSpec | None = None,
        num_blocks: int | tuple[int, int] | None = None,
        split: float = 0.5,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        lepe_kernel: int = 3,
        fused_attn: bool = True,
        backend: str = "auto",
    ) -> None:
        """
        Args:
            dim: channels ``C``.
            num_heads: heads; ``dim`` must divide by it.
            block: block of the softmax heads, ``(bh, bw)``, an int, ``None`` sides for stripes.
            num_blocks: instead of ``block``, the number of blocks ``(nh, nw)`` the grid is cut into.
            split: fraction of heads that are global linear heads; ``num_heads * split`` must be whole.
            qkv_bias: bias in the qkv projection.
            attn_drop: dropout on the block heads' attention probabilities.
            proj_drop: dropout after the output projection.
            lepe_kernel: side of the LePE depthwise kernels.
            fused_attn: block heads through ``F.scaled_dot_product_attention`` when True, plain matmuls when False.
            backend: kernels of the global heads: ``"torch"``, ``"triton"``, or ``"auto"`` (Triton on CUDA when
                installed).
        """
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if block is not None and num_blocks is not None:
            raise ValueError("give either block (a fixed block size) or num_blocks (a fixed block count), not both")
        if num_blocks is not None:
            block_from_count((1, 1), num_blocks)
        else:
            block = DEFAULT_BLOCK if block is None else block
            resolve_block((1, 1), block)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.block, self.num_blocks, self.split = block, num_blocks, split
        self.num_global_heads = global_head_count(num_heads, split)
        self.attn_drop = attn_drop
        self.fused_attn = fused_attn
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        global_channels = self.num_global_heads * self.head_dim
        self.global_lepe = LePE(global_channels, lepe_kernel) if global_channels else None
        self.block_lepe = LePE(dim - global_channels, lepe_kernel) if dim - global_channels else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def block_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The concrete ``(bh, bw)`` block this layer uses on the grid ``size``."""
        if self.num_blocks is not None:
            return block_from_count(size, self.num_blocks)
        return resolve_block(size, self.block)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Attend ``x`` ``[B, N, C]`` laid out row-major on the grid ``size=(H, W)``; returns ``[B, N, C]``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, N, C={self.dim}], got shape {tuple(x.shape)}")
        height, width = check_size(size)
        tokens = x.shape[1]
        if height * width != tokens:
            raise ValueError(f"grid size {height}x{width}={height * width} does not match the {tokens} tokens of x")
        q, k, v = self.project_heads(x)
        out = elfatt(q, k, v, (height, width), **self.attention_options((height, width)))
        return self.merge_heads(out)

    def project_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v ``[B, heads, N, d]`` of tokens ``x`` ``[B, N, C]`` through the ``qkv`` linear."""
        batch, tokens, _ = x.shape
        # [3, B, heads, N, d]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def attention_options(self, size: tuple[int, int]) -> dict:
        """The keyword arguments of :func:`~elfatt.functional.elfatt` this layer uses on the grid ``size``."""
        return dict(
            block=self.block_size(size),
            split=self.split,
            global_lepe=lepe_weights(self.global_lepe),
            block_lepe=lepe_weights(self.block_lepe),
            dropout_p=self.attn_drop if self.training else 0.0,
            fused=self.fused_attn,
            backend=self.backend,
        )

    def merge_heads(self, out: Tensor) -> Tensor:
        """``[B, heads, N, d]`` attention output to ``[B, N, C]`` through ``proj`` and its dropout."""
        batch, _, tokens, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, self.dim)))

    def extra_repr(self) -> str:
        blocks = f"num_blocks={self.num_blocks}" if self.num_blocks is not None else f"block={self.block}"
        return f"dim={self.dim}, num_heads={self.num_heads}, global_heads={self.num_global_heads}, {blocks}"


def lepe_weights(module: LePE | None) -> tuple[Tensor, Tensor | None] | None:
    """``(weight, bias)`` of a LePE module for the functional ops, or None where there is none."""
    return None if module is None else (module.conv.weight, module.conv.bias)
