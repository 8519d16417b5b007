"""Vanilla softmax attention with explicit matmuls.

"Attention Is All You Need", Vaswani et al., NeurIPS 2017, https://arxiv.org/abs/1706.03762, eq. (1):
``Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V`` per head, over all ``N`` tokens. The ``N x N`` score matrix
is materialised, so memory and time grow with ``N^2``; this is the baseline every speed-up is measured against.
"""

from __future__ import annotations

from torch import Tensor

from elfatt_lab.attention._base import QKVAttention

__all__ = ["VanillaAttention"]


class VanillaAttention(QKVAttention):
    """Global multi-head softmax attention computed as ``softmax(q k^T * d^-0.5) @ v`` with plain matmuls."""

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = False, lepe: bool = False) -> None:
        """Arguments as for :class:`QKVAttention`; adds the score scale ``d^-0.5``."""
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, lepe=lepe)
        self.scale = self.head_dim**-0.5

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``softmax(q k^T * d^-0.5) @ v`` on ``[B, heads, N, d]``, padded keys' scores ``-inf``."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            attn = attn.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        return attn.softmax(dim=-1) @ v
