"""A pre-norm transformer block around any registered mechanism: what the benchmark's ViT and the experiments'
small transformer are built of, so that only the attention differs between the mechanisms they compare."""

from __future__ import annotations

from torch import Tensor, nn

from elfatt_lab.attention.registry import build_attention

__all__ = ["MechanismBlock"]


class MechanismBlock(nn.Module):
    """Pre-norm transformer block: the attention ``mechanism`` and an MLP, each with a residual; ``[B, N, C]``."""

    def __init__(self, dim: int, num_heads: int, mechanism: str, mlp_ratio: float = 4.0) -> None:
        """
        Args:
            dim: channels ``C``.
            num_heads: attention heads.
            mechanism: a name in :data:`~elfatt_lab.attention.registry.MECHANISMS`.
            mlp_ratio: MLP hidden width over ``dim``.
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = build_attention(mechanism, dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, size: tuple[int, int], key_padding_mask: Tensor | None = None) -> Tensor:
        """Tokens ``x`` ``[B, N, C]`` on the grid ``size=(H, W)``; ``key_padding_mask`` ``[B, N]`` (True at padded
        tokens) for a mechanism that takes one."""
        padding = {} if key_padding_mask is None else {"key_padding_mask": key_padding_mask}
        x = x + self.attn(self.norm1(x), size, **padding)
        return x + self.mlp(self.norm2(x))
