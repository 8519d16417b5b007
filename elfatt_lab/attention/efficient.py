"""Efficient Attention: linear attention from two softmaxes.

"Efficient Attention: Attention with Linear Complexities", Shen, Zhang, Zhao, Yi, Li, WACV 2021,
https://arxiv.org/abs/1812.01243, eq. (2)-(3): per head,
``E(Q, K, V) = rho_q(Q) (rho_k(K)^T V)`` with ``rho_q`` the softmax of each query over its ``d`` channels and
``rho_k`` the softmax of each key channel over the ``N`` tokens. The ``d x d`` context ``rho_k(K)^T V`` is formed
first, so the cost is ``O(N d^2)``. There is no ``1/sqrt(d)`` scale: the softmaxes normalise. The residual
connection of the paper's module is left to the surrounding block, like every other peer here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from elfatt_lab.attention._base import QKVAttention

__all__ = ["EfficientAttention"]


class EfficientAttention(QKVAttention):
    """Multi-head ``softmax_channels(q) @ (softmax_tokens(k)^T @ v)``, linear in the number of tokens.

    Built as ``EfficientAttention(dim, num_heads=8, *, qkv_bias=False)``, see :class:`QKVAttention`.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """The two softmaxes and the ``d x d`` context on ``[B, heads, N, d]``; padded keys get no weight."""
        if key_padding_mask is not None:
            k = k.masked_fill(key_padding_mask[:, None, :, None], torch.finfo(k.dtype).min)
        context = k.softmax(dim=-2).transpose(-2, -1) @ v  # [B, heads, d, d]
        return q.softmax(dim=-1) @ context
