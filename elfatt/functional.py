"""ELFATT's ops on token tensors ``[B, heads, N, d]`` laid out row-major on an ``(H, W)`` grid.

ELFATT: Efficient Linear Fast Attention for Vision Transformers. Wu, Che, Xu, Ran, Yan; ACM MM 2025,
https://arxiv.org/abs/2501.06098. The heads are split in two parallel groups: global linear attention
heads and blockified softmax attention heads, each with its own LePE; their outputs are concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt._checks import check_qkv, check_tokens
from elfatt.backends import resolve_backend, triton_global_linear_attention
from elfatt.blocks import (
    BlockSpec,
    block_layout,
    block_token_index,
    blockify,
    blocks_to_grid,
    gather_blocks,
    grid_to_blocks,
    padded_blocks,
    resolve_block,
    unblockify,
)

__all__ = [
    "global_linear_attention",
    "block_attention",
    "softmax_attention",
    "lepe",
    "global_head_count",
    "half_split",
    "elfatt",
]

LePEWeights = tuple[Tensor, Tensor | None]


def global_linear_attention(q: Tensor, k: Tensor, v: Tensor, *, backend: str = "auto") -> Tensor:
    """Global linear attention: ``softmax_row(q) @ (softmax_col(k)^T @ v)``, Efficient Attention (Shen et al.).

    The ``d x d`` context is computed first, so the cost is linear in the tokens and no ``N x N`` matrix is
    made. The softmaxes and the context (a reduction over all tokens) run in at least float32 whatever the
    input dtype; only the final ``[N, d] @ [d, d_v]`` product runs in the input dtype. Each output row is a convex
    combination of rows of ``v``, so ``|out| <= max|v|`` and nothing can overflow in float16.

    Args:
        q: queries ``[B, heads, N, d]``; softmax over ``d`` (each token's channels), no ``1/sqrt(d)`` scale.
        k: keys ``[B, heads, N, d]``; softmax over ``N`` (each channel over the tokens).
        v: values ``[B, heads, N, d_v]``.
        backend: ``"torch"``, ``"triton"`` (fused kernels, :mod:`elfatt.backends.triton_global`), or ``"auto"``:
            Triton for CUDA tensors when it is installed, PyTorch otherwise.

    Returns:
        ``[B, heads, N, d_v]`` in the dtype of ``q``.
    """
    check_qkv(q, k, v)
    if resolve_backend(backend, q) == "triton":
        return triton_global_linear_attention()(q, k, v)
    accumulate = torch.promote_types(q.dtype, torch.float32)
    key_weights = k.softmax(dim=-2, dtype=accumulate)
    # [B, heads, d, d_v]
    context = key_weights.transpose(-2, -1) @ v.to(accumulate)
    query_weights = q.softmax(dim=-1, dtype=accumulate)
    return query_weights.to(q.dtype) @ context.to(q.dtype)


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    fused: bool = True,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Exact softmax attention over the last two dims, with no bias and, unless ``key_mask`` is given, no mask.

    Args:
        q, k, v: ``[..., L, d]``, ``[..., L, d]``, ``[..., L, d_v]``.
        scale: score scale; ``d ** -0.5`` when None.
        dropout_p: dropout on the attention probabilities.
        fused: run ``F.scaled_dot_product_attention`` (FlashAttention-eligible on CUDA when no mask is passed);
            when False, plain matmuls and softmax.
        key_mask: boolean, broadcastable to ``[..., 1, L]``, True for the keys each query may attend. Only the
            branch-free traced form of :func:`block_attention` passes one.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def _edge_bands(length: int, block: int) -> list[tuple[int, int, int]]:
    """``(start, stop, block)`` for the part of ``length`` that ``block`` divides, then the remainder."""
    whole = length - length % block
    bands = [(0, whole, block)] if whole else []
    if length % block:
        bands.append((whole, length, length % block))
    return bands


def block_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    block: BlockSpec,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    fused: bool = True,
) -> Tensor:
    """Exact softmax attention inside each block of the token grid, ELFATT's blockified softmax part.

    No mask and no bias are ever passed to ``F.scaled_dot_product_attention``, so FlashAttention is eligible.
    Where ``H`` or ``W`` is not a multiple of the block, the last row and column of blocks are smaller (as
    if the grid were padded and padded tokens received no weight); they are attended as blocks of their own
    exact size, so instead of padding with a mask the grid is cut into at most four regions (whole blocks,
    right edge, bottom edge, corner), each one SDPA call over all its blocks.

    Args:
        q, k, v: ``[B, heads, N, d]`` (``v`` may have its own head dim), ``N == H * W``.
        size: the grid ``(H, W)``.
        block: ``(bh, bw)``, an int for square windows, ``None`` for a whole side (stripes).
        scale: score scale; ``d ** -0.5`` when None.
        dropout_p: dropout on the attention probabilities.
        fused: SDPA when True, plain matmuls when False.

    Returns:
        ``[B, heads, N, d_v]``.
    """
    check_qkv(q, k, v, size)
    if padded_blocks():
        return _padded_block_attention(q, k, v, size, block, scale=scale, dropout_p=dropout_p, fused=fused)
    height, width = size
    bh, bw = resolve_block((height, width), block)
    batch, heads, tokens, _ = q.shape
    grids = [x.reshape(batch, heads, height, width, x.shape[-1]) for x in (q, k, v)]
    rows = []
    for row_start, row_stop, rh in _edge_bands(height, bh):
        columns = []
        for col_start, col_stop, rw in _edge_bands(width, bw):
            region = [grid[:, :, row_start:row_stop, col_start:col_stop] for grid in grids]
            # [B, heads * nb, rh * rw, d]
            q_blocks, k_blocks, v_blocks = (grid_to_blocks(x, rh, rw).flatten(1, 2) for x in region)
            out = softmax_attention(q_blocks, k_blocks, v_blocks, scale=scale, dropout_p=dropout_p, fused=fused)
            out = out.unflatten(1, (heads, -1))
            columns.append(blocks_to_grid(out, row_stop - row_start, col_stop - col_start, rh, rw))
        rows.append(columns[0] if len(columns) == 1 else torch.cat(columns, dim=3))
    grid = rows[0] if len(rows) == 1 else torch.cat(rows, dim=2)
    return grid.reshape(batch, heads, tokens, v.shape[-1])


def _padded_block_attention(
    q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int], block: BlockSpec, *, scale, dropout_p, fused
) -> Tensor:
    """:func:`block_attention` without a branch on the grid's sides, for export: whole blocks gathered from the
    grid, positions past its edge masked out as keys, which gives the edge blocks' exact-size attention."""
    heads = q.shape[1]
    tokens, valid = block_token_index(size, block_layout(size, block), q.device)
    # [B, heads * nb, bh * bw, d]: four dims, as ONNX's attention takes them
    q_blocks, k_blocks, v_blocks = (gather_blocks(x, tokens, valid).flatten(1, 2) for x in (q, k, v))
    # [heads * nb, 1, bh * bw]: the keys of each block that lie on the grid; a block wholly past the grid (a
    # BlockCount's trailing one) attends all its keys rather than none, and its output is never read back.
    key_mask = (valid | ~valid.any(dim=-1, keepdim=True))[:, None, :].repeat(heads, 1, 1)
    out = softmax_attention(
        q_blocks, k_blocks, v_blocks, scale=scale, dropout_p=dropout_p, fused=fused, key_mask=key_mask
    )
    return unblockify(out.unflatten(1, (heads, -1)), size, block)


def _check_lepe_weights(v: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    channels = v.shape[1] * v.shape[3]
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[:2] != (channels, 1):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"LePE weight must be a depthwise kernel [heads * d = {channels}, 1, kh, kw], got {shape}")
    if weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        raise ValueError(f"LePE kernel sides must be odd so the output stays on the grid, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"LePE bias must have shape ({channels},), got {tuple(bias.shape)}")


def lepe(
    v: Tensor, size: tuple[int, int], weight: Tensor, bias: Tensor | None = None, *, block: BlockSpec | None = None
) -> Tensor:
    """LePE, CSWin's locally-enhanced positional encoding: a depthwise convolution of ``v`` on its grid.

    Channel ``head * d + j`` of the conv is channel ``j`` of head ``head``, the order in which heads are
    merged back to ``[B, N, C]``.

    Args:
        v: values ``[B, heads, N, d]``.
        size: the grid ``(H, W)``.
        weight: depthwise kernel ``[heads * d, 1, kh, kw]`` with odd sides.
        bias: ``[heads * d]`` or None.
        block: None to convolve the whole grid (global part); a block spec to convolve each block on its own,
            zero padded at block edges (blockified part).

    Returns:
        ``[B, heads, N, d]``.
    """
    height, width = check_tokens(v, size, "v")
    _check_lepe_weights(v, weight, bias)
    batch, heads, _, dim = v.shape
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    if block is None:
        images = v.transpose(2, 3).reshape(batch, heads * dim, height, width)
        out = F.conv2d(images, weight, bias, padding=padding, groups=heads * dim)
        return out.reshape(batch, heads, dim, height * width).transpose(2, 3)
    bh, bw = resolve_block((height, width), block)
    # [B, heads, nb, bh * bw, d]; blockify pads with zeros, the conv's own zero padding at a block edge.
    blocks = blockify(v, (height, width), block)
    num_blocks = blocks.shape[2]
    images = blocks.permute(0, 2, 1, 4, 3).reshape(batch * num_blocks, heads * dim, bh, bw)
    out = F.conv2d(images, weight, bias, padding=padding, groups=heads * dim)
    out = out.reshape(batch, num_blocks, heads, dim, bh * bw).permute(0, 2, 1, 4, 3)
    return unblockify(out, (height, width), block)


def half_split(num_heads: int) -> float:
    """The fraction of global linear heads that gives half of ``num_heads``, rounded down for an odd count
    (1 of DeiT-Ti's 3 heads)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    return (num_heads // 2) / num_heads


def global_head_count(num_heads: int, split: float, *, round_down: bool = False) -> int:
    """How many of ``num_heads`` heads are global linear heads for a ``split`` fraction in ``[0, 1]``: the one rule
    every part of the library splits heads by.

    Args:
        num_heads: heads of the layer.
        split: fraction of global linear heads.
        round_down: take ``floor(num_heads * split)`` where it is not whole (pretrained layers whose head count is
            fixed, as the diffusion patch's); otherwise a fraction raises.

    Raises:
        ValueError: if ``split`` is outside ``[0, 1]``, or ``num_heads * split`` is not whole and not ``round_down``.
    """
    if not 0.0 <= split <= 1.0:
        raise ValueError(f"split is the fraction of global linear heads and must lie in [0, 1], got {split}")
    count = num_heads * split
    if abs(count - round(count)) <= 1e-9:
        return round(count)
    if round_down:
        return int(count)
    raise ValueError(
        f"{num_heads} heads cannot be split {split}: {num_heads} * {split} = {count:g} global heads is not a "
        f"whole number; choose split as a multiple of 1/{num_heads}"
    )


def elfatt(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    *,
    block: BlockSpec,
    split: float = 0.5,
    global_lepe: LePEWeights | None = None,
    block_lepe: LePEWeights | None = None,
    num_prefix_tokens: int = 0,
    dropout_p: float = 0.0,
    fused: bool = True,
    backend: str = "auto",
) -> Tensor:
    """ELFATT attention: global linear heads and blockified softmax heads in parallel, concatenated.

    The first ``heads * split`` heads are global linear heads (:func:`global_linear_attention` plus LePE on
    the whole grid), the rest blockified softmax heads (:func:`block_attention` plus LePE on each block).

    ``P = num_prefix_tokens`` extra tokens (a ViT's class token, registers) may come before the grid, as NATTEN's
    additional keys: global heads attend over all ``P + H * W`` tokens (LePE added to the grid's); in the block
    heads the prefix queries attend all keys with exact softmax and the grid queries their block of the grid.

    Args:
        q, k, v: ``[B, heads, P + H * W, d]``, prefix tokens first.
        size: the grid ``(H, W)`` of the last ``H * W`` tokens.
        block: block of the softmax heads: ``(bh, bw)``, an int, ``None`` for a whole side, or a ``BlockCount``.
        split: fraction of heads that are global linear heads (0 gives only blocks, 1 only global heads).
        global_lepe: ``(weight, bias)`` of the global heads' LePE, weight ``[global_heads * d, 1, k, k]``;
            None for no LePE.
        block_lepe: ``(weight, bias)`` of the block heads' LePE, weight ``[block_heads * d, 1, k, k]``.
        num_prefix_tokens: ``P >= 0``.
        dropout_p: dropout on the block heads' attention probabilities.
        fused: SDPA for the block heads when True, plain matmuls when False.
        backend: kernels of the global heads, see :func:`global_linear_attention`.

    Returns:
        ``[B, heads, P + H * W, d_v]``, global heads first.
    """
    prefix = num_prefix_tokens
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {prefix!r}")
    check_qkv(q, k, v)
    check_tokens(q[:, :, prefix:], size, "q after its prefix tokens" if prefix else "q")
    num_global = global_head_count(q.shape[1], split)
    parts = []
    if num_global:
        v_global = v[:, :num_global]
        out = global_linear_attention(q[:, :num_global], k[:, :num_global], v_global, backend=backend)
        if global_lepe is not None:
            grid_lepe = lepe(v_global[:, :, prefix:], size, *global_lepe)
            out = out + grid_lepe if not prefix else torch.cat([out[:, :, :prefix], out[:, :, prefix:] + grid_lepe], 2)
        parts.append(out)
    if num_global < q.shape[1]:
        q_block, k_block, v_block = q[:, num_global:], k[:, num_global:], v[:, num_global:]
        q_grid, k_grid, v_grid = (x[:, :, prefix:] for x in (q_block, k_block, v_block))
        out = block_attention(q_grid, k_grid, v_grid, size, block, dropout_p=dropout_p, fused=fused)
        if block_lepe is not None:
            out = out + lepe(v_grid, size, *block_lepe, block=block)
        if prefix:
            # [B, block heads, P, d_v]: the prefix queries see every key, exact softmax.
            prefix_out = softmax_attention(q_block[:, :, :prefix], k_block, v_block, dropout_p=dropout_p, fused=fused)
            out = torch.cat([prefix_out, out], dim=2)
        parts.append(out)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
