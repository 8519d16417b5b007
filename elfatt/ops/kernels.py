"""ELFATT's eager kernels on the tokens-last layout ``[B, P + H * W, heads, d]``, trusting checked inputs.

The global heads: ``softmax_row(Q) (softmax_col(K)^T V)`` plus LePE on the whole grid. The block heads: exact
softmax attention inside each block plus LePE per block, laid out by a :class:`~elfatt.ops.plan.Plan`; prefix
queries (a class token, registers) attend every key with exact softmax. See :func:`elfatt.ops.elfatt`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt.ops.backends import triton_global_linear_attention
from elfatt.ops.plan import Plan

__all__ = ["global_linear_attention", "global_part", "block_part", "prefix_part", "depthwise_conv"]

LePEWeights = tuple[Tensor, Tensor | None]


def global_linear_attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """``softmax_row(q) @ (softmax_col(k)^T @ v)`` of ``[B, T, heads, d]`` tensors, as ``[B, heads, T, d_v]``.

    The softmaxes and the ``d x d_v`` context run in at least float32; the last product in the input dtype.
    """
    if backend == "triton":
        return triton_global_linear_attention()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    batch, tokens, heads, dim = q.shape
    dim_v = v.shape[-1]
    if dim_v == dim:
        # one copy of all three, head-major: [3, B * heads, T, d]; both softmaxes then read dense memory
        q, k, v = torch.stack([x.transpose(1, 2) for x in (q, k, v)]).view(3, batch * heads, tokens, dim).unbind(0)
    else:
        q, k, v = (x.transpose(1, 2).reshape(batch * heads, tokens, x.shape[-1]) for x in (q, k, v))
    upcast = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else None
    key_weights = k.softmax(dim=1, dtype=upcast)
    context = torch.bmm(key_weights.transpose(1, 2), v if upcast is None else v.to(upcast))
    query_weights = q.softmax(dim=-1, dtype=upcast)
    if upcast is not None:
        query_weights, context = query_weights.to(q.dtype), context.to(q.dtype)
    return torch.bmm(query_weights, context).view(batch, heads, tokens, dim_v)


def depthwise_conv(images: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """LePE's depthwise conv of channels-last ``images`` ``[n, h, w, C]``, zero padded at their edges."""
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    # a dense channels-last input takes oneDNN's depthwise path and comes back channels-last
    out = F.conv2d(images.permute(0, 3, 1, 2), weight, bias, padding=padding, groups=images.shape[-1])
    return out.permute(0, 2, 3, 1)


def global_part(
    q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int], prefix: int, lepe: LePEWeights | None, backend: str
) -> Tensor:
    """The global heads, ``[B, T, heads_g, d_v]`` (a transposed view)."""
    out = global_linear_attention(q, k, v, backend).transpose(1, 2)
    if lepe is None:
        return out
    batch, _, heads, dim_v = v.shape
    grid = v[:, prefix:].reshape(batch, size[0], size[1], heads * dim_v).contiguous()
    local = depthwise_conv(grid, *lepe).reshape(batch, size[0] * size[1], heads, dim_v)
    if prefix:
        local = F.pad(local, (0, 0, 0, 0, prefix, 0))
    return out + local


def block_part(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: Plan,
    lepe: LePEWeights | None,
    scale: float | None,
    dropout_p: float,
    fused: bool,
) -> Tensor:
    """The block heads' grid queries, ``[B * H * W, heads_b, d_v]`` in grid order."""
    batch, tokens, heads, dim_v = v.shape
    # [rows, heads, d] each, chunk after chunk of whole blocks
    packed = _packed(q, k, v)
    if packed is not None:
        gathered = packed.index_select(0, plan.gather).unbind(1)
    else:
        gathered = [
            _SelectRows.apply(
                x.reshape(batch * tokens, heads, x.shape[-1]), plan.gather, plan.scatter, plan.source_rows
            )
            for x in (q, k, v)
        ]
    values = gathered[2] if plan.on_grid is None else gathered[2] * plan.on_grid
    outs = []
    whole = len(plan.chunks) == 1
    for chunk in plan.chunks:
        length = chunk.bh * chunk.bw
        q_blocks, k_blocks, v_blocks = (
            (x if whole else x[chunk.start : chunk.stop]).view(chunk.count, length, heads, x.shape[-1]).transpose(1, 2)
            for x in gathered
        )
        out = _softmax_attention(q_blocks, k_blocks, v_blocks, plan.key_bias, scale, dropout_p, fused)
        rows = chunk.stop - chunk.start
        out = out.transpose(1, 2).reshape(rows, heads, dim_v)
        if lepe is not None:
            images = (values if whole else values[chunk.start : chunk.stop]).view(
                chunk.count, chunk.bh, chunk.bw, heads * dim_v
            )
            out = out + depthwise_conv(images, *lepe).reshape(rows, heads, dim_v)
        outs.append(out)
    blocks = outs[0] if len(outs) == 1 else torch.cat(outs)
    if plan.grid_of_row is None:
        return _SelectRows.apply(blocks, plan.scatter, None, plan.scatter)
    return _SelectRows.apply(blocks, plan.scatter, plan.grid_of_row, None)


class _SelectRows(torch.autograd.Function):
    """``x.index_select(0, index)`` whose gradient is put back by index rather than added.

    Each row of ``x`` that gets a gradient is read once; every other read (a position past the grid, which the plan
    reads from the nearest grid token) gets an exact zero gradient, the keys being masked and the queries' outputs
    never read back. So the gradient of ``x`` is ``grad[back]`` at the rows ``rows`` (all rows in order where
    None), zero elsewhere; ``back`` None reads ``grad`` as it is.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, back: Tensor | None, rows: Tensor | None) -> Tensor:
        ctx.save_for_backward(back, rows)
        ctx.shape = x.shape
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        back, rows = ctx.saved_tensors
        picked = grad if back is None else grad.index_select(0, back)
        if rows is None:
            return picked, None, None, None
        return grad.new_zeros(ctx.shape).index_copy_(0, rows, picked), None, None, None


def _packed(q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
    """``q, k, v`` as one ``[B * T, 3, heads, d]`` view where they are equally spaced slices of one tensor (the
    three thirds of a qkv linear's output), so that one gather reads all three; None otherwise, and None where a
    gradient is to flow (as_strided's backward fills a zero copy of the whole base, slower than three gathers')."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    if not (q.shape == k.shape == v.shape and q.stride() == k.stride() == v.stride()) or q.stride(-1) != 1:
        return None
    base = q._base
    if base is None or k._base is not base or v._base is not base:
        return None
    step = k.storage_offset() - q.storage_offset()
    batch_stride, token_stride, head_stride, _ = q.stride()
    if step <= 0 or v.storage_offset() - k.storage_offset() != step or batch_stride != q.shape[1] * token_stride:
        return None
    shape = (q.shape[0] * q.shape[1], 3, q.shape[2], q.shape[3])
    # taken on the common base, whose gradient as_strided's backward then fills directly
    return base.as_strided(shape, (token_stride, step, head_stride, 1), q.storage_offset())


def prefix_part(q: Tensor, k: Tensor, v: Tensor, prefix: int, scale: float | None, dropout_p: float, fused: bool):
    """The block heads' prefix queries, which attend every key: ``[B, P, heads_b, d_v]`` (a transposed view)."""
    q_prefix, k_all, v_all = q[:, :prefix].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return _softmax_attention(q_prefix, k_all, v_all, None, scale, dropout_p, fused).transpose(1, 2)


def _softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float | None, dropout_p: float, fused: bool
) -> Tensor:
    """Softmax attention of ``[n, heads, L, d]`` tensors, SDPA or plain matmuls; ``bias`` (made by the plan in
    ``q``'s dtype) is added to the scores."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v
