"""Triton kernels for ELFATT's global linear attention, ``softmax_row(Q) (softmax_col(K)^T V)``.

Two passes over the tokens, fp32 accumulation, one read of every input and one write of the output:

1. ``context_kernel``, one program per (batch, head): the column softmax of K over the tokens and the
   ``d x d_v`` context ``softmax_col(K)^T V`` in one read of K and V, with an online max and sum per channel
   across token tiles (the rescaling FlashAttention uses, turned on its side).
2. ``output_kernel``, one program per (batch, head, token tile): the row softmax of Q over its ``d``
   channels times the context, written once in the input dtype.

Head dims that are not powers of two are padded inside the kernels with masks. The backward is a custom
``autograd.Function`` in PyTorch that recomputes both softmaxes from q and k (see :class:`GlobalLinearAttention`).
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors through Triton's interpreter, which the tests use.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["global_linear_attention_triton", "GlobalLinearAttention"]


@triton.jit
def context_kernel(
    k_ptr, v_ptr, context_ptr, tokens,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vd,
    DIM: tl.constexpr, DIM_V: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, LOW_PRECISION: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    channels = tl.arange(0, BLOCK_D)
    channels_v = tl.arange(0, BLOCK_DV)
    running_max = tl.full((BLOCK_D,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_D,), tl.float32)
    context = tl.zeros((BLOCK_D, BLOCK_DV), tl.float32)
    for start in range(0, tokens, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < tokens
        k = tl.load(
            k_ptr + head * stride_kb + rows[:, None] * stride_kn + channels[None, :] * stride_kd,
            mask=row_ok[:, None] & (channels[None, :] < DIM),
            other=0.0,
        ).to(tl.float32)
        k = tl.where(row_ok[:, None], k, float("-inf"))
        v = tl.load(
            v_ptr + head * stride_vb + rows[:, None] * stride_vn + channels_v[None, :] * stride_vd,
            mask=row_ok[:, None] & (channels_v[None, :] < DIM_V),
            other=0.0,
        )
        new_max = tl.maximum(running_max, tl.max(k, axis=0))
        rescale = tl.exp(running_max - new_max)
        weights = tl.exp(k - new_max[None, :])
        running_sum = running_sum * rescale + tl.sum(weights, axis=0)
        if LOW_PRECISION:
            # Weights in [0, 1] in the input's 16-bit type, tensor cores, fp32 accumulation.
            update = tl.dot(tl.trans(weights.to(v.dtype)), v)
        else:
            update = tl.dot(tl.trans(weights), v.to(tl.float32), input_precision="ieee")
        context = context * rescale[:, None] + update
        running_max = new_max
    context = context / running_sum[:, None]
    out = context_ptr + head * DIM * DIM_V + channels[:, None] * DIM_V + channels_v[None, :]
    tl.store(out, context, mask=(channels[:, None] < DIM) & (channels_v[None, :] < DIM_V))


@triton.jit
def output_kernel(
    q_ptr, context_ptr, out_ptr, tokens,
    stride_qb, stride_qn, stride_qd,
    stride_ob, stride_on, stride_od,
    DIM: tl.constexpr, DIM_V: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, LOW_PRECISION: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    channels = tl.arange(0, BLOCK_D)
    channels_v = tl.arange(0, BLOCK_DV)
    row_ok = rows < tokens
    q = tl.load(
        q_ptr + head * stride_qb + rows[:, None] * stride_qn + channels[None, :] * stride_qd,
        mask=row_ok[:, None] & (channels[None, :] < DIM),
        other=0.0,
    ).to(tl.float32)
    q = tl.where(channels[None, :] < DIM, q, float("-inf"))
    weights = tl.exp(q - tl.max(q, axis=1)[:, None])
    weights = weights / tl.sum(weights, axis=1)[:, None]
    context = tl.load(
        context_ptr + head * DIM * DIM_V + channels[:, None] * DIM_V + channels_v[None, :],
        mask=(channels[:, None] < DIM) & (channels_v[None, :] < DIM_V),
        other=0.0,
    )
    if LOW_PRECISION:
        out = tl.dot(weights.to(out_ptr.dtype.element_ty), context.to(out_ptr.dtype.element_ty))
    else:
        out = tl.dot(weights, context, input_precision="ieee")
    tl.store(
        out_ptr + head * stride_ob + rows[:, None] * stride_on + channels_v[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & (channels_v[None, :] < DIM_V),
    )


def _block(size: int) -> int:
    return max(16, triton.next_power_of_2(size))


def _forward(q: Tensor, k: Tensor, v: Tensor, block_n: int) -> tuple[Tensor, Tensor]:
    """``(out [B, h, N, d_v], context [B * h, d, d_v] float32)``."""
    batch, heads, tokens, dim = q.shape
    dim_v = v.shape[-1]
    q3, k3, v3 = (x.reshape(batch * heads, tokens, x.shape[-1]) for x in (q, k, v))
    context = torch.empty(batch * heads, dim, dim_v, device=q.device, dtype=torch.float32)
    out = torch.empty(batch * heads, tokens, dim_v, device=q.device, dtype=q.dtype)
    sizes = dict(DIM=dim, DIM_V=dim_v, BLOCK_N=block_n, BLOCK_D=_block(dim), BLOCK_DV=_block(dim_v))
    # Triton's interpreter computes tl.dot on bfloat16 operands wrongly (their bits read as integers), so there
    # bfloat16 takes the float32 dot; on a GPU both 16-bit types take the tensor-core dot that float16 tests.
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    sizes["LOW_PRECISION"] = q.dtype == torch.float16 or (q.dtype == torch.bfloat16 and not interpreting)
    context_kernel[(batch * heads,)](k3, v3, context, tokens, *k3.stride(), *v3.stride(), **sizes)
    grid = (batch * heads, triton.cdiv(tokens, block_n))
    output_kernel[grid](q3, context, out, tokens, *q3.stride(), *out.stride(), **sizes)
    return out.reshape(batch, heads, tokens, dim_v), context.reshape(batch, heads, dim, dim_v)


class GlobalLinearAttention(torch.autograd.Function):
    """Triton forward; PyTorch backward that recomputes ``softmax_row(q)`` and ``softmax_col(k)`` in float32.

    With ``A = softmax_row(Q)``, ``S = softmax_col(K)``, ``C = S^T V`` and ``O = A C``:
    ``dA = dO C^T``, ``dC = A^T dO``, ``dQ = A * (dA - rowsum(dA * A))``, ``dS = V dC^T``, ``dV = S dC``,
    ``dK = S * (dS - colsum(dS * S))``. Only q, k, v are kept between the passes; the backward recomputes the
    context in PyTorch from them, so under ``create_graph=True`` it is itself differentiable and second-order
    gradients are exact.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, block_n: int) -> Tensor:  # type: ignore[override]
        out, _ = _forward(q, k, v, block_n)
        ctx.save_for_backward(q, k, v)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        q, k, v = ctx.saved_tensors
        grad_out = grad_out.float()
        query_weights = q.float().softmax(dim=-1)
        key_weights = k.float().softmax(dim=-2)
        context = key_weights.transpose(-2, -1) @ v.float()
        grad_query_weights = grad_out @ context.transpose(-2, -1)
        grad_context = query_weights.transpose(-2, -1) @ grad_out
        grad_q = query_weights * (grad_query_weights - (grad_query_weights * query_weights).sum(-1, keepdim=True))
        grad_key_weights = v.float() @ grad_context.transpose(-2, -1)
        grad_v = key_weights @ grad_context
        grad_k = key_weights * (grad_key_weights - (grad_key_weights * key_weights).sum(-2, keepdim=True))
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None


def global_linear_attention_triton(q: Tensor, k: Tensor, v: Tensor, *, block_n: int = 64) -> Tensor:
    """Global linear attention through the Triton kernels; inputs ``[B, heads, N, d]`` on one device."""
    return GlobalLinearAttention.apply(q, k, v, block_n)
