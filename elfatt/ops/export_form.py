"""ELFATT as one branch-free graph for ``torch.export`` (the ONNX path): nothing branches on a grid side, so the
exported program is right at every size.

Whole blocks are gathered from the grid by index, positions past its edge zeroed (LePE's padding) and masked out
as keys, which gives the edge blocks' exact-size attention. Under export a block side larger than the grid is not
clipped and a counted side keeps its count (trailing blocks may lie wholly past the grid: they attend all their
keys rather than none, and are never read back), so no traced expression nests divisions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt.ops.blocks import ceil_div
from elfatt.ops.kernels import LePEWeights

__all__ = ["attend_traced"]


def _remainder(index: Tensor, divisor: int) -> Tensor:
    """``index % divisor`` as ``index - (index // divisor) * divisor``: ONNX has no remainder by a traced size."""
    return index - index // divisor * divisor


def _layout(size: tuple[int, int], block: tuple[int, int, bool]) -> tuple[int, int, int, int]:
    """``(bh, bw, nh, nw)``: the block and how many blocks cut the grid along each side."""
    (height, width), (bh, bw, by_count) = size, block
    if by_count:
        return ceil_div(height, bh), ceil_div(width, bw), bh, bw
    bh, nh = (height, 1) if bh == 0 else (bh, ceil_div(height, bh))
    bw, nw = (width, 1) if bw == 0 else (bw, ceil_div(width, bw))
    return bh, bw, nh, nw


def _conv(images: Tensor, lepe: LePEWeights) -> Tensor:
    weight, bias = lepe
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    return F.conv2d(images, weight, bias, padding=padding, groups=images.shape[1])


def _global(q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int], prefix: int, lepe: LePEWeights | None) -> Tensor:
    """Global heads of head-major ``[B, heads, T, d]`` tensors."""
    accumulate = torch.promote_types(q.dtype, torch.float32)
    context = k.softmax(dim=-2, dtype=accumulate).transpose(-2, -1) @ v.to(accumulate)
    out = q.softmax(dim=-1, dtype=accumulate).to(q.dtype) @ context.to(q.dtype)
    if lepe is None:
        return out
    batch, heads, _, dim = v.shape
    images = v[:, :, prefix:].transpose(2, 3).reshape(batch, heads * dim, size[0], size[1])
    local = _conv(images, lepe).reshape(batch, heads, dim, -1).transpose(2, 3)
    return out + F.pad(local, (0, 0, prefix, 0))


def _blocks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    block: tuple[int, int, bool],
    prefix: int,
    lepe: LePEWeights | None,
    scale: float | None,
    dropout_p: float,
    fused: bool,
) -> Tensor:
    """Block heads of head-major ``[B, heads, T, d]`` tensors."""
    (height, width), (bh, bw, nh, nw) = size, _layout(size, block)
    batch, heads, _, dim = v.shape
    blocks = torch.arange(nh * nw, device=q.device)[:, None]
    positions = torch.arange(bh * bw, device=q.device)[None, :]
    rows = blocks // nw * bh + positions // bw
    cols = _remainder(blocks, nw) * bw + _remainder(positions, bw)
    valid = (rows < height) & (cols < width)
    tokens = rows.clamp(max=height - 1) * width + cols.clamp(max=width - 1)
    # [B, heads * nb, bh * bw, d]: four dims, as ONNX's attention takes them
    q_blocks, k_blocks, v_blocks = (
        (x[:, :, prefix:][:, :, tokens] * valid[:, :, None].to(x.dtype)).flatten(1, 2) for x in (q, k, v)
    )
    key_mask = (valid | ~valid.any(dim=-1, keepdim=True))[:, None, :].repeat(heads, 1, 1)
    if fused:
        out = F.scaled_dot_product_attention(
            q_blocks, k_blocks, v_blocks, attn_mask=key_mask, dropout_p=dropout_p, scale=scale
        )
    else:
        scores = (q_blocks * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k_blocks.transpose(-2, -1)
        weights = F.dropout(scores.masked_fill(~key_mask, float("-inf")).softmax(dim=-1), p=dropout_p)
        out = weights @ v_blocks
    out = out.unflatten(1, (heads, -1))
    if lepe is not None:
        images = v_blocks.unflatten(1, (heads, -1)).permute(0, 2, 1, 4, 3).reshape(-1, heads * dim, bh, bw)
        local = _conv(images, lepe).reshape(batch, -1, heads, dim, bh * bw).permute(0, 2, 1, 4, 3)
        out = out + local
    grid = torch.arange(height * width, device=q.device)
    grid_rows, grid_cols = grid // width, _remainder(grid, width)
    block_index = grid_rows // bh * nw + grid_cols // bw
    position = _remainder(grid_rows, bh) * bw + _remainder(grid_cols, bw)
    out = out[:, :, block_index, position]
    if prefix:
        prefix_out = F.scaled_dot_product_attention(q[:, :, :prefix], k, v, dropout_p=dropout_p, scale=scale)
        out = torch.cat([prefix_out, out], dim=2)
    return out


def attend_traced(
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
) -> Tensor:
    """:func:`~elfatt.ops.attend.attend`'s result, ``[B, P + H * W, heads, d_v]``, in the branch-free form."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    split = num_global_heads
    parts = []
    if split:
        parts.append(_global(q[:, :split], k[:, :split], v[:, :split], size, prefix, global_lepe))
    if split < q.shape[1]:
        parts.append(
            _blocks(q[:, split:], k[:, split:], v[:, split:], size, block, prefix, block_lepe, scale, dropout_p, fused)
        )
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out.transpose(1, 2)
