"""ELFATT on token sequences, as the paper runs the Long Range Arena: blocks along the sequence, the global heads over
all of it, and padded positions (a batch of sequences of different lengths) left out of both parts.

Without padding a sequence of ``L`` tokens is the ``1 x L`` grid of :func:`~elfatt.ops.elfatt` with ``(1, block)``
blocks, so every form of the 2-D op serves it (eager plan, the compiled op, the export graph). With a key-padding
mask, padded positions are excluded by rules that keep each part as it is:

- global heads: padded keys are set to the dtype's lowest value before the softmax over tokens, so their weight is
  an exact zero and the normaliser counts the real tokens only; padded values are zeroed, so LePE sees them as the
  zeros past the sequence's ends;
- block heads: padded keys get an additive ``-inf`` in their block's scores. On the CPU one masked SDPA call takes
  every block (its fused kernel takes a mask at no extra cost); on CUDA the blocks no padding falls in run
  mask-free (FlashAttention) and only the others with the mask;
- padded positions' outputs are zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt.ops.attend import padded_layout
from elfatt.ops.blocks import ceil_div
from elfatt.ops.checks import (
    check_block_length,
    check_dropout,
    check_global_heads,
    check_inputs,
    check_key_padding_mask,
    check_lepe,
)
from elfatt.ops.interface import elfatt
from elfatt.ops.kernels import LePEWeights, _softmax_attention, depthwise_conv

__all__ = ["elfatt_sequence"]


def elfatt_sequence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block: int = 64,
    num_global_heads: int | None = None,
    global_lepe: LePEWeights | None = None,
    block_lepe: LePEWeights | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    fused: bool = True,
    backend: str = "auto",
) -> Tensor:
    """ELFATT over sequences ``[B, L, heads, d]``: global linear heads over all tokens, softmax heads in blocks of
    ``block`` consecutive tokens (the last one shorter where ``L`` does not divide), LePE along the sequence.

    Args:
        q, k, v: ``[B, L, heads, d]`` (``v`` may have its own head dim), as for :func:`~elfatt.ops.elfatt`.
        block: tokens per block of the softmax heads, ``>= 1`` (clipped to ``L``).
        num_global_heads: how many heads, first, are global linear heads; None for half, rounded down.
        global_lepe, block_lepe: each part's LePE ``(weight, bias)`` as for :func:`~elfatt.ops.elfatt`: a depthwise
            ``[channels, 1, kh, kw]`` kernel, of which a sequence (a ``1 x L`` grid) meets the middle row.
        key_padding_mask: ``[B, L]`` bool, True at padded positions (``nn.MultiheadAttention``'s convention), or
            None for none. Padded tokens take no part in either part and their outputs are zero.
        scale, dropout_p, fused, backend: as for :func:`~elfatt.ops.elfatt`.

    Returns:
        ``[B, L, heads, d_v]``.
    """
    if not isinstance(q, Tensor) or q.dim() != 4:
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"q must be [B, L, heads, d], got {shape}")
    length = q.shape[1]
    block = check_block_length(block, length)
    options = dict(block=(1, block), num_global_heads=num_global_heads, scale=scale, dropout_p=dropout_p)
    options.update(fused=fused, backend=backend)
    if key_padding_mask is None:
        return elfatt(q, k, v, (1, length), global_lepe=global_lepe, block_lepe=block_lepe, **options)
    check_inputs(q, k, v, (1, length), 0)
    pad = check_key_padding_mask(key_padding_mask, q)
    heads, dim_v = v.shape[2], v.shape[3]
    split = check_global_heads(num_global_heads, heads)
    block_lepe = check_lepe(block_lepe, (heads - split) * dim_v, "block_lepe")
    check_dropout(dropout_p)
    keep = (~pad)[:, :, None, None]
    v = v * keep.to(v.dtype)
    parts = []
    if split:
        k_global = k[:, :, :split].masked_fill(pad[:, :, None, None], torch.finfo(k.dtype).min)
        options["num_global_heads"] = split
        v_global = v[:, :, :split]
        parts.append(elfatt(q[:, :, :split], k_global, v_global, (1, length), global_lepe=global_lepe, **options))
    if split < heads:
        one_call = padded_layout(q.device) or torch.compiler.is_compiling()
        qkv_block = (q[:, :, split:], k[:, :, split:], v[:, :, split:])
        parts.append(_padded_blocks(*qkv_block, pad, block, block_lepe, scale, dropout_p, fused, one_call))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out * keep.to(out.dtype)


def _padded_blocks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pad: Tensor,
    block: int,
    lepe: LePEWeights | None,
    scale: float | None,
    dropout_p: float,
    fused: bool,
    one_call: bool,
) -> Tensor:
    """The block heads of padded sequences, ``[B, L, heads, d_v]``; ``v`` is zero at padded positions.

    The sequence is cut into ``ceil(L / block)`` blocks (positions past its end count as padded). A block of padding
    only is attended unmasked (its queries' outputs are zeroed by the caller), so no row is all ``-inf``.
    ``one_call``: every block in one masked SDPA call; otherwise the blocks without padding in one mask-free call and
    the others in a masked one.
    """
    batch, length, heads, dim_v = v.shape
    blocks = ceil_div(length, block)
    extra = blocks * block - length

    def blockify(x: Tensor) -> Tensor:  # [B, L, heads, d] -> [B * blocks, heads, block, d]
        x = F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x
        return x.reshape(batch * blocks, block, heads, x.shape[-1]).transpose(1, 2)

    q_blocks, k_blocks, v_blocks = blockify(q), blockify(k), blockify(v)
    key_pad = F.pad(pad, (0, extra), value=True).view(batch * blocks, block)
    key_pad = key_pad & ~key_pad.all(dim=1, keepdim=True)
    bias = torch.zeros(key_pad.shape, dtype=q.dtype, device=q.device).masked_fill(key_pad, float("-inf"))
    bias = bias.view(batch * blocks, 1, 1, block)
    if one_call:
        out = _softmax_attention(q_blocks, k_blocks, v_blocks, bias, scale, dropout_p, fused)
    else:
        padded = key_pad.any(dim=1)
        clean, masked = (~padded).nonzero().squeeze(1), padded.nonzero().squeeze(1)
        out = q_blocks.new_empty(batch * blocks, heads, block, dim_v)
        for rows, rows_bias in ((clean, None), (masked, bias.index_select(0, masked))):
            picked = [x.index_select(0, rows) for x in (q_blocks, k_blocks, v_blocks)]
            out = out.index_copy(0, rows, _softmax_attention(*picked, rows_bias, scale, dropout_p, fused))
    out = out.transpose(1, 2)  # [B * blocks, block, heads, d_v]
    if lepe is not None:
        images = v_blocks.transpose(1, 2).reshape(batch * blocks, 1, block, heads * dim_v)
        out = out + depthwise_conv(images, *lepe).view(batch * blocks, block, heads, dim_v)
    return out.reshape(batch, blocks * block, heads, dim_v)[:, :length]
