"""FLatten focused linear attention.

"FLatten Transformer: Vision Transformer using Focused Linear Attention", Han, Pan, Han, Song, Huang, ICCV 2023,
https://arxiv.org/abs/2308.00442, sec. 4. The focused map (eq. 5)
``phi_p(x) = ||ReLU(x)|| / ||ReLU(x)^p|| * ReLU(x)^p`` (powers taken elementwise) replaces ``exp`` in softmax
attention, giving linear attention with its normaliser (eq. 4)
``O_i = phi_p(Q_i) (sum_j phi_p(K_j)^T V_j) / (phi_p(Q_i) sum_j phi_p(K_j)^T)``, and the rank-restoration module
(eq. 7) adds a depthwise conv of V: ``O = linear attention + DWC(V)``.

As in the official code: ``ReLU(x) + 1e-6`` is divided by the learnable ``softplus(scale)`` (one entry per
channel, starting at ``softplus(0)``) before focusing; the norms in ``phi_p`` run over all ``C`` channels of a
token, before the split into heads; the normaliser gets ``+ 1e-6``; one DWC (``head_dim`` channels) is shared by
all heads and runs over the whole grid with zero padding. Left out: the official code's learned positional
embedding added to K, whose size is tied to one token count. ``ReLU(x)^p`` is computed after dividing by the
token's largest entry, which leaves ``phi_p`` unchanged and keeps the power from overflowing in float16. The
context ``sum_j phi_p(K_j)^T V_j`` is always formed first (the official code switches to ``(Q K^T) V`` for tiny
token counts, which gives the same result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elfatt_lab.attention._base import QKVAttention
from elfatt_lab.attention._checks import check_tokens, padding_keep

__all__ = ["FocusedLinearAttention", "focused_map"]


def focused_map(x: Tensor, focusing_factor: float) -> Tensor:
    """``f_p(x) = ||x|| / ||x^p|| * x^p`` over the last dim, for positive ``x`` (``ReLU`` output plus an epsilon)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    powered = (x / x.amax(dim=-1, keepdim=True)) ** focusing_factor
    return powered * (norm / torch.linalg.vector_norm(powered, dim=-1, keepdim=True))


class FocusedLinearAttention(QKVAttention):
    """Linear attention with the focused map ``phi_p`` on q and k, plus a depthwise conv of V."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = False,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
    ) -> None:
        """
        Args:
            dim, num_heads, qkv_bias: as for :class:`QKVAttention`.
            focusing_factor: the power ``p`` of the focused map.
            kernel_size: odd side of the depthwise conv on V.
        """
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.focusing_factor = focusing_factor
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim)

    def forward(self, x: Tensor, size: tuple[int, int], key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend over all tokens of ``x`` ``[B, N, C]`` on the grid ``size=(H, W)``; returns ``[B, N, C]``.
        Padded tokens (``key_padding_mask`` ``[B, N]``, True there) get a zero focused key and value (so no part in
        the context, the normaliser or the DWC) and a zero output."""
        batch, height, width = check_tokens(x, size, self.dim)
        tokens = x.shape[1]
        q, k, v = self.project_qkv(x)
        scale = F.softplus(self.scale)
        q = focused_map((F.relu(q) + 1e-6) / scale, self.focusing_factor)
        k = focused_map((F.relu(k) + 1e-6) / scale, self.focusing_factor)
        keep = None if key_padding_mask is None else padding_keep(key_padding_mask, x)[..., None]
        if keep is not None:
            k, v = k * keep, v * keep
        q, k, v = (self.split_heads(t) for t in (q, k, v))  # [B, heads, N, d]
        context = k.transpose(-2, -1) @ v  # [B, heads, d, d]
        normaliser = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6  # [B, heads, N, 1]
        x = (q @ context) / normaliser
        v = v.reshape(batch * self.num_heads, tokens, self.head_dim).transpose(1, 2)
        dwc = self.dwc(v.reshape(-1, self.head_dim, height, width))
        x = self.merge_heads(x + dwc.reshape(batch, self.num_heads, self.head_dim, tokens).transpose(-2, -1))
        return self.proj(x if keep is None else x * keep)
