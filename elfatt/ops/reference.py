"""Float64 reference for ELFATT, written straight from the equations of the specification, for tests only.

Loops over batch, head and block; no reshape tricks; softmax written as exp / sum. Every function upcasts
its inputs to float64 and stays differentiable, so tests compare both outputs and gradients against it.
Blocks are given as concrete ``(bh, bw)``; where the grid does not divide, the last blocks are smaller.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "softmax",
    "global_linear_attention",
    "block_token_indices",
    "block_attention",
    "lepe",
    "softmax_attention",
    "elfatt",
    "elfatt_tokens_last",
    "elfatt_attention_module",
    "elfatt_sequence",
]


def softmax(x: Tensor, dim: int) -> Tensor:
    """``exp(x - max) / sum(exp(x - max))`` along ``dim``."""
    shifted = torch.exp(x - x.amax(dim=dim, keepdim=True).detach())
    return shifted / shifted.sum(dim=dim, keepdim=True)


def global_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax_row(Q) softmax_col(K)^T V`` for each batch and head; inputs ``[B, heads, N, d]``."""
    q, k, v = q.double(), k.double(), v.double()
    batches = []
    for b in range(q.shape[0]):
        heads = []
        for h in range(q.shape[1]):
            query_weights = softmax(q[b, h], dim=1)
            key_weights = softmax(k[b, h], dim=0)
            heads.append(query_weights @ (key_weights.T @ v[b, h]))
        batches.append(torch.stack(heads))
    return torch.stack(batches)


def block_token_indices(size: tuple[int, int], block: tuple[int, int]) -> list[list[int]]:
    """Row-major token indices of each block of the grid, blocks in row-major order, edge blocks cropped."""
    height, width = size
    bh, bw = block
    blocks = []
    for top in range(0, height, bh):
        for left in range(0, width, bw):
            rows = range(top, min(top + bh, height))
            cols = range(left, min(left + bw, width))
            blocks.append([r * width + c for r in rows for c in cols])
    return blocks


def block_attention(
    q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int], block: tuple[int, int], scale: float | None = None
) -> Tensor:
    """``softmax(Q_b K_b^T * scale) V_b`` inside each block ``b``, put back in token order."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64, device=q.device)
    for indices in block_token_indices(size, block):
        for b in range(q.shape[0]):
            for h in range(q.shape[1]):
                q_block, k_block, v_block = q[b, h, indices], k[b, h, indices], v[b, h, indices]
                weights = softmax(q_block @ k_block.T * scale, dim=1)
                out[b, h, indices] = weights @ v_block
    return out


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """``softmax(Q K^T * scale) V`` over all keys, for each batch and head; inputs ``[B, heads, L, d]``."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.stack(
        [torch.stack([softmax(q[b, h] @ k[b, h].T * scale, dim=1) @ v[b, h] for h in range(q.shape[1])])
         for b in range(q.shape[0])]
    )  # fmt: skip


def _depthwise_conv(image: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``out[c, i, j] = bias[c] + sum_{a, b} weight[c, 0, a, b] * image[c, i + a - ka // 2, j + b - kb // 2]``.

    ``image`` is ``[channels, rows, cols]``; pixels outside it count as zero.
    """
    _, rows, cols = image.shape
    kernel_rows, kernel_cols = weight.shape[-2:]
    out = torch.zeros_like(image)
    for a in range(kernel_rows):
        for b in range(kernel_cols):
            di, dj = a - kernel_rows // 2, b - kernel_cols // 2
            i0, i1 = max(0, -di), min(rows, rows - di)
            j0, j1 = max(0, -dj), min(cols, cols - dj)
            if i0 >= i1 or j0 >= j1:
                continue
            tap = weight[:, 0, a, b][:, None, None] * image[:, i0 + di : i1 + di, j0 + dj : j1 + dj]
            out[:, i0:i1, j0:j1] = out[:, i0:i1, j0:j1] + tap
    if bias is not None:
        out = out + bias[:, None, None]
    return out


def lepe(
    v: Tensor, size: tuple[int, int], weight: Tensor, bias: Tensor | None, block: tuple[int, int] | None = None
) -> Tensor:
    """Depthwise conv of V per block (whole grid when ``block`` is None); channel ``h * d + j`` is head h's j."""
    v, weight = v.double(), weight.double()
    bias = None if bias is None else bias.double()
    height, width = size
    batch, heads, _, dim = v.shape
    block = (height, width) if block is None else block
    out = torch.zeros_like(v)
    for indices in block_token_indices(size, block):
        rows = indices[-1] // width - indices[0] // width + 1
        cols = len(indices) // rows
        for b in range(batch):
            # channel-major image of this block: [heads * d, rows, cols]
            image = v[b, :, indices].permute(0, 2, 1).reshape(heads * dim, rows, cols)
            conv = _depthwise_conv(image, weight, bias)
            out[b, :, indices] = conv.reshape(heads, dim, rows * cols).permute(0, 2, 1)
    return out


def elfatt(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    block: tuple[int, int],
    global_heads: int,
    global_lepe: tuple[Tensor, Tensor | None] | None = None,
    block_lepe: tuple[Tensor, Tensor | None] | None = None,
    prefix: int = 0,
    scale: float | None = None,
) -> Tensor:
    """``cat(H_bar, H_tilde)`` over heads of ``[B, heads, P + H * W, d]`` tensors: the first ``global_heads`` heads
    global linear over all tokens (LePE on the grid's), the rest blockified on the grid, their ``P`` prefix queries
    attending every key."""
    parts = []
    if global_heads:
        q_bar, k_bar, v_bar = q[:, :global_heads], k[:, :global_heads], v[:, :global_heads]
        out = global_linear_attention(q_bar, k_bar, v_bar)
        if global_lepe is not None:
            local = lepe(v_bar[:, :, prefix:], size, *global_lepe)
            out = torch.cat([out[:, :, :prefix], out[:, :, prefix:] + local], dim=2)
        parts.append(out)
    if global_heads < q.shape[1]:
        q_tilde, k_tilde, v_tilde = q[:, global_heads:], k[:, global_heads:], v[:, global_heads:]
        grid = [x[:, :, prefix:] for x in (q_tilde, k_tilde, v_tilde)]
        out = block_attention(*grid, size, block, scale)
        if block_lepe is not None:
            out = out + lepe(grid[2], size, *block_lepe, block=block)
        if prefix:
            out = torch.cat([softmax_attention(q_tilde[:, :, :prefix], k_tilde, v_tilde, scale), out], dim=2)
        parts.append(out)
    return torch.cat(parts, dim=1)


def elfatt_sequence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block: int,
    global_heads: int,
    global_lepe: tuple[Tensor, Tensor | None] | None = None,
    block_lepe: tuple[Tensor, Tensor | None] | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """ELFATT over sequences ``[B, heads, L, d]`` of which the positions where ``key_padding_mask`` ``[B, L]`` is
    True are padding: each sequence's real tokens alone attend, in the global heads over all of them, in the block
    heads over those of their block of ``block`` positions; LePE along the ``1 x L`` grid sees padding as zeros;
    padded positions' outputs are zero."""
    batch, heads, length, _ = q.shape
    dim_v = v.shape[-1]
    pad = torch.zeros(batch, length, dtype=torch.bool) if key_padding_mask is None else key_padding_mask.cpu()
    v = v.double() * (~pad).to(q.device)[:, None, :, None]
    out = torch.zeros(batch, heads, length, dim_v, dtype=torch.float64, device=q.device)
    blocks = [list(range(start, min(start + block, length))) for start in range(0, length, block)]
    for b in range(batch):
        real = [i for i in range(length) if not pad[b, i]]
        if not real:
            continue
        rows = []
        for h in range(heads):
            one = (x[b : b + 1, h : h + 1] for x in (q, k, v))
            row = torch.zeros(length, dim_v, dtype=torch.float64, device=q.device)
            if h < global_heads:
                q_h, k_h, v_h = (x[:, :, real] for x in one)
                row[real] = global_linear_attention(q_h, k_h, v_h)[0, 0]
                lepe_weights, lepe_block = global_lepe, None
            else:
                q_h, k_h, v_h = one
                for positions in blocks:
                    kept = [i for i in positions if not pad[b, i]]
                    if kept:
                        row[kept] = softmax_attention(q_h[:, :, kept], k_h[:, :, kept], v_h[:, :, kept], scale)[0, 0]
                lepe_weights, lepe_block = block_lepe, (1, block)
            if lepe_weights is not None:
                first = (h if h < global_heads else h - global_heads) * dim_v
                weight, bias = lepe_weights
                part = slice(first, first + dim_v)
                bias = None if bias is None else bias[part]
                local = lepe(v[b : b + 1, h : h + 1], (1, length), weight[part], bias, lepe_block)
                row = row + local[0, 0]
            rows.append(row)
        out[b] = torch.stack(rows) * (~pad[b]).to(q.device)[None, :, None]
    return out


def elfatt_tokens_last(q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    """:func:`elfatt` of ``[B, P + H * W, heads, d]`` tensors, the op's layout; same arguments after them."""
    out = elfatt(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), *args, **kwargs)
    return out.transpose(1, 2)


def elfatt_attention_module(module: torch.nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """What an ``ELFATTAttention`` computes, from its parameters: qkv linear, :func:`elfatt`, proj linear."""
    x = x.double()
    params = {name: p.double() for name, p in module.named_parameters()}
    batch, tokens, channels = x.shape
    heads, dim = module.num_heads, channels // module.num_heads
    qkv = x @ params["qkv.weight"].T
    if "qkv.bias" in params:
        qkv = qkv + params["qkv.bias"]
    q, k, v = (
        qkv[..., i * channels : (i + 1) * channels].reshape(batch, tokens, heads, dim).transpose(1, 2) for i in range(3)
    )
    lepes = {}
    for part in ("global_lepe", "block_lepe"):
        if f"{part}.conv.weight" in params:
            lepes[part] = (params[f"{part}.conv.weight"], params[f"{part}.conv.bias"])
    block = module.block_size(size)
    out = elfatt(q, k, v, size, block, module.num_global_heads, lepes.get("global_lepe"), lepes.get("block_lepe"))
    out = out.transpose(1, 2).reshape(batch, tokens, channels)
    return out @ params["proj.weight"].T + params["proj.bias"]
