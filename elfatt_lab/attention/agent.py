"""Agent Attention: softmax attention routed through a few pooled agent tokens.

"Agent Attention: On the Integration of Softmax and Linear Attention", Han, Ye, Han, Pan, Wan, Song, Huang,
ECCV 2024, https://arxiv.org/abs/2312.08873, sec. 3.2, eq. (3): agent tokens ``A`` (``n`` of them, pooled from Q)
first aggregate the values, ``V_A = softmax(A K^T / sqrt(d)) V`` (agent aggregation), then broadcast them,
``O = softmax(Q A^T / sqrt(d)) V_A`` (agent broadcast); sec. 3.3 adds a depthwise conv of V (DWC) to restore
feature diversity. Cost is ``O(N n d)``, linear in the tokens ``N``.

As in the official code: ``A`` is the adaptive average pooling of the projected Q (all heads at once) on its
``(H, W)`` grid to a ``sqrt(n) x sqrt(n)`` grid, and the DWC is one ``3 x 3`` depthwise conv over all ``C``
channels of V on the whole grid, zero padded. Kept: the two softmax attentions and the DWC, with keys over all
tokens (the PVT variant with ``sr_ratio=1``). Left out: the official code's agent and position biases, whose sizes
are tied to one grid. When a grid side is shorter than the agent grid, the agent grid is clipped to it on that side
(``(min(s, H), min(s, W))`` agents), so every agent is the mean of distinct tokens rather than a copy.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from elfatt_lab.attention._base import QKVAttention
from elfatt_lab.attention._checks import check_tokens

__all__ = ["AgentAttention"]


class AgentAttention(QKVAttention):
    """Agent aggregation then agent broadcast (two small softmax attentions), plus a depthwise conv of V."""

    def __init__(
        self, dim: int, num_heads: int = 8, *, qkv_bias: bool = False, agent_num: int = 49, kernel_size: int = 3
    ) -> None:
        """
        Args:
            dim, num_heads, qkv_bias: as for :class:`QKVAttention`.
            agent_num: agent tokens ``n``; a perfect square, pooled as a ``sqrt(n) x sqrt(n)`` grid.
            kernel_size: odd side of the depthwise conv on V.
        """
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        side = math.isqrt(agent_num) if agent_num >= 1 else 0
        if side < 1 or side * side != agent_num:
            raise ValueError(f"agent_num must be a perfect square >= 1 (a square agent grid), got {agent_num}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.agent_num = agent_num
        self.agent_side = side
        self.scale = self.head_dim**-0.5
        self.dwc = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Attend over all tokens of ``x`` ``[B, N, C]`` on the grid ``size=(H, W)``; returns ``[B, N, C]``."""
        batch, height, width = check_tokens(x, size, self.dim)
        tokens = x.shape[1]
        q, k, v = self.project_qkv(x)
        pooled = (min(self.agent_side, height), min(self.agent_side, width))
        agents = F.adaptive_avg_pool2d(q.transpose(1, 2).reshape(batch, self.dim, height, width), pooled)
        agents = agents.reshape(batch, self.num_heads, self.head_dim, -1).transpose(-2, -1)  # [B, heads, n, d]
        q, k, v = (self.split_heads(t) for t in (q, k, v))  # [B, heads, N, d]
        agent_v = ((agents * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # [B, heads, n, d]
        x = ((q * self.scale) @ agents.transpose(-2, -1)).softmax(dim=-1) @ agent_v
        x = self.merge_heads(x)
        dwc = self.dwc(v.transpose(-2, -1).reshape(batch, self.dim, height, width))
        return self.proj(x + dwc.reshape(batch, self.dim, tokens).transpose(1, 2))
