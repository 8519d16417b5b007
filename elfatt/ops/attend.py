"""The eager composition of ELFATT's parts on checked inputs: what the public entry and the registered op run."""

from __future__ import annotations

import torch
from torch import Tensor

from elfatt.ops.blocks import concrete_block
from elfatt.ops.kernels import LePEWeights, block_part, global_part, prefix_part
from elfatt.ops.plan import plan_for

__all__ = ["attend", "padded_layout"]


def padded_layout(device: torch.device) -> bool:
    """Whether the block heads run in the plan's padded layout (one masked SDPA call, the CPU's) or its regions
    layout (mask-free calls, FlashAttention on CUDA)."""
    return device.type != "cuda"


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    block: tuple[int, int, bool],
    num_global_heads: int,
    global_lepe: LePEWeights | None,
    block_lepe: LePEWeights | None,
    prefix: int,
    scale: float | None,
    dropout_p: float,
    fused: bool,
    backend: str,
    padded: bool | None = None,
) -> Tensor:
    """ELFATT of ``[B, P + H * W, heads, d]`` tensors, ``[B, P + H * W, heads, d_v]``; see :func:`elfatt.ops.elfatt`.

    ``padded`` overrides :func:`padded_layout` (the tests run both layouts on the CPU).
    """
    batch, tokens, heads, dim_v = v.shape
    split = num_global_heads
    parts = []
    if split:
        parts.append(global_part(q[:, :, :split], k[:, :, :split], v[:, :, :split], size, prefix, global_lepe, backend))
    if split < heads:
        q_block, k_block, v_block = q[:, :, split:], k[:, :, split:], v[:, :, split:]
        padded = padded_layout(q.device) if padded is None else padded
        plan = plan_for(batch, tokens, prefix, size, concrete_block(size, block), padded, q.device, q.dtype)
        out = block_part(q_block, k_block, v_block, plan, block_lepe, scale, dropout_p, fused)
        out = out.view(batch, tokens - prefix, heads - split, dim_v)
        if prefix:
            out = torch.cat([prefix_part(q_block, k_block, v_block, prefix, scale, dropout_p, fused), out], dim=1)
        parts.append(out)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
