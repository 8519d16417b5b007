"""The transformer block every ELFATT backbone is built of."""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp
from timm.models import register_notrace_module
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from elfatt.modules import ELFATTAttention

__all__ = ["ELFATTBlock"]

# FX feature extraction traces around the attention, whose block layout depends on the grid's sizes.
register_notrace_module(ELFATTAttention)


class ELFATTBlock(nn.Module):
    """Pre-norm transformer block with :class:`~elfatt.modules.ELFATTAttention`: tokens ``[B, P + H * W, C]``
    (``P`` prefix tokens, then the grid) in and out."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **attn_kwargs: Any,
    ) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            mlp_ratio: MLP hidden width over ``dim``.
            qkv_bias: bias in the qkv projection.
            qk_norm: normalise queries and keys per head.
            proj_drop: dropout after the attention projection and in the MLP.
            attn_drop: dropout on the block heads' attention probabilities.
            drop_path: stochastic depth rate of both residual branches.
            norm_layer: normalisation over channels (and, with ``qk_norm``, over the head dim).
            act_layer: MLP activation.
            device, dtype: where and how the parameters are made.
            **attn_kwargs: the attention's ``block``, ``split``, ``lepe_kernel``, ``fused_attn``.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = ELFATTAttention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            norm_layer=norm_layer,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            **dd,
            **attn_kwargs,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: Tensor, size: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
        """Tokens ``x`` ``[B, P + H * W, C]``: ``P = num_prefix_tokens``, then the grid ``size=(H, W)``; with
        ``grad_checkpointing`` the activations are recomputed in the backward pass (not under TorchScript)."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(self.attend_and_mix, x, size, num_prefix_tokens, use_reentrant=False)
        return self.attend_and_mix(x, size, num_prefix_tokens)

    def attend_and_mix(self, x: Tensor, size: tuple[int, int], num_prefix_tokens: int) -> Tensor:
        """The block's two residual branches: attention, then the MLP."""
        x = x + self.drop_path1(self.attn(self.norm1(x), size, num_prefix_tokens))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
