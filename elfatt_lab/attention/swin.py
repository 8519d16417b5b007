"""Swin window attention (W-MSA) with the learned relative-position bias.

"Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu et al., ICCV 2021,
https://arxiv.org/abs/2103.14030, sec. 3.2, eq. (4): inside each ``M x M`` window,
``Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B) V`` with ``B`` gathered from a learned table
``B_hat`` of ``(2M - 1) x (2M - 1)`` entries per head, indexed by the relative offset of the two tokens.

Only the plain (non-shifted) window layer is built here; the shifted-window layer of Swin's alternate blocks
costs the same. A grid that the window does not divide is padded at the bottom and right with zero tokens
*before* the qkv projection, as Swin's detection/segmentation code does: padded tokens then carry only the qkv
bias, take part unmasked as keys and values in their window (so they do change the real tokens' output near
the bottom/right edge, as in Swin), and their outputs are cropped away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elfatt.ops.checks import pair
from elfatt_lab.attention._base import QKVAttention
from elfatt_lab.attention._checks import check_tokens, window_partition, window_reverse

__all__ = ["SwinWindowAttention", "relative_position_index"]


def relative_position_index(window: tuple[int, int]) -> Tensor:
    """Index into the ``(2wh - 1) * (2ww - 1)`` bias table for each token pair of a window: ``[wh*ww, wh*ww]``."""
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]  # [2, n, n], offsets in [-(w - 1), w - 1]
    return (relative[0] + wh - 1) * (2 * ww - 1) + (relative[1] + ww - 1)


class SwinWindowAttention(QKVAttention):
    """Multi-head softmax attention inside non-overlapping windows, plus Swin's relative-position bias.

    Grids the window does not divide are zero-padded at the bottom/right before the qkv projection; the padded
    tokens are keys and values (unmasked, as in Swin) and are cropped from the output.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, *, qkv_bias: bool = False, window_size: int | tuple[int, int] = 7
    ) -> None:
        """
        Args:
            dim, num_heads, qkv_bias: as for :class:`QKVAttention`.
            window_size: window side, or ``(height, width)``.
        """
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        self.scale = self.head_dim**-0.5
        self.window_size = pair(window_size, "window_size")
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)

    def relative_position_bias(self) -> Tensor:
        """The bias ``B`` added to the scores of every window, ``[heads, wh*ww, wh*ww]``."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Attend inside windows of ``x`` ``[B, N, C]`` on the grid ``size=(H, W)``; returns ``[B, N, C]``."""
        batch, height, width = check_tokens(x, size, self.dim)
        wh, ww = self.window_size
        pad_h, pad_w = -height % wh, -width % ww
        x = F.pad(x.reshape(batch, height, width, self.dim), (0, 0, 0, pad_w, 0, pad_h))
        padded = (height + pad_h, width + pad_w)
        windows = window_partition(x, self.window_size)  # [B * nW, n, C]
        q, k, v = self.split_qkv(windows)  # [B * nW, heads, n, d]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias().to(q.dtype)
        windows = self.merge_heads(attn.softmax(dim=-1) @ v)
        x = window_reverse(windows, self.window_size, padded)[:, :height, :width]
        return self.proj(x.reshape(batch, height * width, self.dim))
