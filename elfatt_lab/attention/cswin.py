"""CSWin cross-shaped window attention with LePE.

"CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows", Dong et al., CVPR 2022,
https://arxiv.org/abs/2107.00652, sec. 3.2-3.3. The ``K`` heads split in two halves: heads ``1..K/2`` attend
inside horizontal stripes of ``sw`` rows by the full width (eq. 2, H-Attention), heads ``K/2+1..K`` inside
vertical stripes of the full height by ``sw`` columns (V-Attention); the halves are concatenated and projected
(eq. 3). Each half adds LePE (eq. 4): ``softmax(Q K^T / sqrt(d)) V + DWConv3x3(V)``, the depthwise conv run on
each stripe alone, so it sees zeros past the stripe's edges.

The paper's order (first half horizontal) is used; the official classification code gives the first half the
vertical stripes, which is the same layer up to a permutation of the weights. A grid that ``sw`` does not divide
is padded with zero q, k, v (after the projection) evenly on both sides, the extra row or column at the bottom or
right, as CSWin's segmentation code does: padded tokens are unmasked keys with zero value, so they only add
``exp(0)`` terms to the softmax denominators of real queries in edge stripes; their outputs are cropped away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elfatt_lab.attention._base import QKVAttention
from elfatt_lab.attention._checks import check_tokens, window_partition, window_reverse

__all__ = ["CSWinAttention"]


class CSWinAttention(QKVAttention):
    """Half the heads attend in horizontal stripes, half in vertical stripes, each with per-stripe LePE."""

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = False, split_size: int = 7) -> None:
        """
        Args:
            dim, num_heads, qkv_bias: as for :class:`QKVAttention`; ``num_heads`` must also be even.
            split_size: stripe width ``sw`` in tokens.
        """
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        if num_heads % 2:
            raise ValueError(f"CSWin splits the heads in two halves; num_heads={num_heads} must be even")
        if split_size < 1:
            raise ValueError(f"split_size must be >= 1, got {split_size}")
        self.split_size = split_size
        self.scale = self.head_dim**-0.5
        half = dim // 2
        # One LePE per half: index 0 for the horizontal stripes, 1 for the vertical ones.
        self.lepe = nn.ModuleList(nn.Conv2d(half, half, 3, padding=1, groups=half) for _ in range(2))

    def _stripes(self, q: Tensor, k: Tensor, v: Tensor, vertical: bool) -> Tensor:
        """Stripe attention plus LePE of one half: q, k, v ``[B, H, W, C/2]`` in, ``[B, H, W, C/2]`` out."""
        _, height, width, channels = q.shape
        if vertical:
            pad_h, pad_w = 0, -width % self.split_size
            stripe = (height, self.split_size)
        else:
            pad_h, pad_w = -height % self.split_size, 0
            stripe = (self.split_size, width)
        top, left = pad_h // 2, pad_w // 2
        padding = (0, 0, left, pad_w - left, top, pad_h - top)
        padded = (height + pad_h, width + pad_w)
        q, k, v = (window_partition(F.pad(t, padding), stripe) for t in (q, k, v))  # [B * nS, n, C/2]
        stripes, n = q.shape[:2]
        lepe = self.lepe[int(vertical)](v.transpose(1, 2).reshape(stripes, channels, *stripe))
        lepe = lepe.reshape(stripes, self.num_heads // 2, self.head_dim, n).transpose(-2, -1)
        q, k, v = (self.split_heads(t) for t in (q, k, v))  # [B * nS, heads / 2, n, d]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        x = self.merge_heads(attn.softmax(dim=-1) @ v + lepe)
        return window_reverse(x, stripe, padded)[:, top : top + height, left : left + width]

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Cross-shaped window attention on ``x`` ``[B, N, C]`` over the grid ``size=(H, W)``; returns ``[B, N, C]``."""
        batch, height, width = check_tokens(x, size, self.dim)
        q, k, v = self.project_qkv(x.reshape(batch, height, width, self.dim))
        half = self.dim // 2
        x = torch.cat(
            [
                self._stripes(q[..., :half], k[..., :half], v[..., :half], vertical=False),
                self._stripes(q[..., half:], k[..., half:], v[..., half:], vertical=True),
            ],
            dim=-1,
        )
        return self.proj(x.reshape(batch, height * width, self.dim))
