"""Global softmax attention through PyTorch's fused ``scaled_dot_product_attention``.

The same maths as :mod:`elfatt_lab.attention.vanilla` ("Attention Is All You Need", Vaswani et al., NeurIPS 2017,
https://arxiv.org/abs/1706.03762), dispatched to the fastest kernel PyTorch has for the device and dtype:
FlashAttention-2 ("FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", Dao,
ICLR 2024, https://arxiv.org/abs/2307.08691) or memory-efficient attention on CUDA, a fused C++ kernel on CPU.
No dropout; a mask only for padded sequences.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from elfatt_lab.attention._base import QKVAttention

__all__ = ["SDPAAttention"]


class SDPAAttention(QKVAttention):
    """Global multi-head softmax attention via ``F.scaled_dot_product_attention`` (scale ``d^-0.5``).

    Built as ``SDPAAttention(dim, num_heads=8, *, qkv_bias=False)``, see :class:`QKVAttention`.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """PyTorch's fused softmax attention on ``[B, heads, N, d]``; padded keys masked out."""
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
