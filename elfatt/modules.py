"""nn.Modules over :func:`elfatt.ops.elfatt`: LePE and ``ELFATTAttention``, a drop-in for timm's ViT ``Attention``.

TorchScript: the layers script (timm's ``torch.jit.script`` tests pass through them), but the attention itself is
one ``torch.jit.ignore``-d call back into Python (:func:`attend_tokens_last`), so a scripted model runs in Python and
cannot be saved; deploy through ``torch.export`` or ONNX instead (:mod:`elfatt.export`).
"""

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from elfatt.ops import BlockCount, BlockSpec, elfatt, global_head_count
from elfatt.ops.backends import BACKENDS
from elfatt.ops.blocks import block_from_count, encode_block, resolve_block
from elfatt.ops.checks import check_size
from elfatt.ops.kernels import depthwise_conv

__all__ = ["LePE", "ELFATTAttention", "DEFAULT_BLOCK", "attend_tokens_last"]

DEFAULT_BLOCK = 8

# A block spec normalised for TorchScript: ``(bh, bw)`` with None for a whole side.
NormalisedBlock = tuple[Optional[int], Optional[int]]


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

    @torch.jit.ignore
    def forward(self, v: Tensor, size: tuple[int, int]) -> Tensor:
        """LePE of ``v`` ``[B, H * W, C]`` (channel ``head * d + j``) on the grid ``size``; ``[B, H * W, C]``."""
        height, width = check_size(size)
        if v.dim() != 3 or v.shape[1] != height * width:
            raise ValueError(f"v must be [B, H * W = {height * width}, C], got shape {tuple(v.shape)}")
        images = v.reshape(v.shape[0], height, width, v.shape[2]).contiguous()
        return depthwise_conv(images, self.conv.weight, self.conv.bias).reshape(v.shape)


class ELFATTAttention(nn.Module):
    """ELFATT attention layer: ``[B, N, C]`` tokens on an ``(H, W)`` grid in, the same shape out.

    A drop-in for timm's ViT ``Attention`` (``qkv`` / ``proj`` linears, optional per-head ``q_norm`` / ``k_norm``)
    that also takes the grid size. ``split`` of the heads run global linear attention with LePE on the whole grid,
    the others exact softmax attention inside blocks with LePE per block; the heads are concatenated and
    projected. Tokens before the grid (a ViT's class token, registers) attend as :func:`elfatt.ops.elfatt` says of
    ``num_prefix_tokens``.

    The block is either a fixed size (``block``, linear cost in tokens) or a fixed count (``num_blocks``,
    the paper's ``b`` blocks whose size grows with the grid); give at most one. Neither gives
    ``block=DEFAULT_BLOCK`` (8 x 8 windows). Both attributes can be set later (the backbones'
    ``set_input_size`` does); they are kept as pairs, ``block=8`` as ``(8, 8)``.
    """

    __jit_unused_properties__ = ["block", "num_blocks"]

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        block: BlockSpec | None = None,
        num_blocks: int | tuple[int, int] | None = None,
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
    ) -> None:
        """
        Args:
            dim: channels ``C``.
            num_heads: heads; ``dim`` must divide by it.
            block: block of the softmax heads, ``(bh, bw)``, an int, ``None`` sides for stripes.
            num_blocks: instead of ``block``, the number of blocks ``(nh, nw)`` the grid is cut into.
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
        """
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if block is not None and num_blocks is not None:
            raise ValueError("give either block (a fixed block size) or num_blocks (a fixed block count), not both")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self._block: Optional[NormalisedBlock] = None
        self._num_blocks: Optional[tuple[int, int]] = None
        if num_blocks is not None:
            self.num_blocks = num_blocks
        else:
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
    def block(self) -> Optional[NormalisedBlock]:
        """The fixed block ``(bh, bw)`` (None for a whole side), or None when the blocks are counted."""
        return self._block

    @block.setter
    def block(self, block: BlockSpec | None) -> None:
        if block is None:
            self._block = None
            return
        if isinstance(block, BlockCount):
            raise TypeError("set a block count through num_blocks, not block")
        encode_block(block)
        self._block = (block, block) if isinstance(block, int) else (block[0], block[1])
        self._num_blocks = None

    @property
    def num_blocks(self) -> Optional[tuple[int, int]]:
        """The fixed block count ``(nh, nw)``, or None when the blocks have a fixed size."""
        return self._num_blocks

    @num_blocks.setter
    def num_blocks(self, num_blocks: int | tuple[int, int] | None) -> None:
        if num_blocks is None:
            self._num_blocks = None
            return
        block_from_count((1, 1), num_blocks)
        self._num_blocks = (num_blocks, num_blocks) if isinstance(num_blocks, int) else tuple(num_blocks)
        self._block = None

    @torch.jit.ignore
    def block_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The concrete ``(bh, bw)`` block this layer uses on the grid ``size``."""
        return resolve_block(size, block_spec(self._block, self._num_blocks))

    def forward(self, x: Tensor, size: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """Attend ``x`` ``[B, P + H * W, C]``: ``P = num_prefix_tokens`` tokens, then the grid ``size=(H, W)``
        row-major; returns the same shape."""
        check_layer_input(x, self.dim)
        batch, tokens, _ = x.shape
        # [B, N, heads, d] views of the qkv output: the heads are never permuted to the front
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        global_weight, global_bias, block_weight, block_bias = self.lepe_parameters()
        out = attend_tokens_last(
            q, k, v, size, num_prefix_tokens, self._block, self._num_blocks, self.num_global_heads, global_weight,
            global_bias, block_weight, block_bias, self.attn_drop if self.training else 0.0, self.fused_attn,
            self.backend,
        )  # fmt: skip
        return self.proj_drop(self.proj(out.reshape(batch, tokens, self.dim)))

    def lepe_parameters(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Weight and bias of the global heads' LePE conv, then the block heads' (None where a group is empty)."""
        global_weight: Optional[Tensor] = None
        global_bias: Optional[Tensor] = None
        block_weight: Optional[Tensor] = None
        block_bias: Optional[Tensor] = None
        if self.global_lepe is not None:
            global_weight, global_bias = self.global_lepe.conv.weight, self.global_lepe.conv.bias
        if self.block_lepe is not None:
            block_weight, block_bias = self.block_lepe.conv.weight, self.block_lepe.conv.bias
        return global_weight, global_bias, block_weight, block_bias

    def extra_repr(self) -> str:
        blocks = f"num_blocks={self.num_blocks}" if self.num_blocks is not None else f"block={self.block}"
        return f"dim={self.dim}, num_heads={self.num_heads}, global_heads={self.num_global_heads}, {blocks}"


def block_spec(block: Optional[NormalisedBlock], num_blocks: Optional[tuple[int, int]]) -> BlockSpec:
    """A layer's fixed ``block``, or its ``num_blocks`` as a :class:`~elfatt.ops.BlockCount`."""
    return block if num_blocks is None else BlockCount(num_blocks[0], num_blocks[1])


@torch.jit.ignore
def check_layer_input(x: Tensor, dim: int) -> None:
    """Check that ``x`` is ``[B, N, C=dim]``; the grid and prefix are checked by :func:`elfatt.ops.elfatt`."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be [B, N, C={dim}], got shape {shape}")


@torch.jit.ignore
def attend_tokens_last(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    num_prefix_tokens: int,
    block: Optional[NormalisedBlock],
    num_blocks: Optional[tuple[int, int]],
    num_global_heads: int,
    global_weight: Optional[Tensor],
    global_bias: Optional[Tensor],
    block_weight: Optional[Tensor],
    block_bias: Optional[Tensor],
    dropout_p: float,
    fused: bool,
    backend: str,
) -> Tensor:
    """:func:`elfatt.ops.elfatt` with a layer's settings as plain arguments, so that scripted layers can call it;
    ``[B, P + H * W, heads, d]``."""
    return elfatt(
        q,
        k,
        v,
        size,
        block=block_spec(block, num_blocks),
        num_global_heads=num_global_heads,
        global_lepe=None if global_weight is None else (global_weight, global_bias),
        block_lepe=None if block_weight is None else (block_weight, block_bias),
        num_prefix_tokens=num_prefix_tokens,
        dropout_p=dropout_p,
        fused=fused,
        backend=backend,
    )
