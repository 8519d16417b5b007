"""ELFATT on the layout the qkv linear writes: ``[B, tokens, heads, d]``, tokens before heads.

:func:`~elfatt.functional.elfatt` takes ``[B, heads, N, d]``, so a layer that calls it permutes its qkv output to
head-major, the LePE convs permute again to channel-major images, and the heads are permuted back before the
output projection. Here the layer's own layout is kept throughout: the heads of one token stay next to each other,
which is what a channels-last image is, so both LePE convs run on channels-last views (the fast depthwise path on
CPU), the blocks are gathered from the grid once per tensor and fed to SDPA as strided views, and both parts
write straight into one ``[B, tokens, C]`` output. The result is :func:`~elfatt.functional.elfatt`'s, merged; the
tests check it against the float64 reference.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from elfatt._checks import check_tokens
from elfatt.blocks import BlockSpec, resolve_block
from elfatt.functional import LePEWeights, _edge_bands, global_linear_attention, softmax_attention

__all__ = ["elfatt_tokens_last", "lepe_channels_last"]


def lepe_channels_last(images: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """LePE of ``images`` ``[n, h, w, C]`` (channel ``head * d + j``), zero padded at their edges; ``[n, h, w, C]``."""
    channels = images.shape[-1]
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    # A dense channels-last input takes oneDNN's depthwise path and comes back channels-last: no layout copies.
    out = F.conv2d(images.contiguous().permute(0, 3, 1, 2), weight, bias, padding=padding, groups=channels)
    return out.permute(0, 2, 3, 1)


def _gather_blocks(grid: Tensor, rh: int, rw: int) -> Tensor:
    """``[B, R * rh, S * rw, heads, d]`` to its ``rh x rw`` blocks ``[B * R * S, rh * rw, heads, d]`` (one copy)."""
    batch, rows, cols, heads, dim = grid.shape
    blocks = grid.reshape(batch, rows // rh, rh, cols // rw, rw, heads, dim).permute(0, 1, 3, 2, 4, 5, 6)
    return blocks.reshape(batch * (rows // rh) * (cols // rw), rh * rw, heads, dim)


def _global_part(
    out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    prefix: int,
    lepe: LePEWeights | None,
    backend: str,
) -> None:
    """Write the global heads' output into ``out`` ``[B, P + H * W, heads_g * d_v]``."""
    batch, tokens, heads, dim_v = v.shape
    attended = global_linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend=backend)
    out.view(batch, tokens, heads, dim_v).copy_(attended.transpose(1, 2))
    if lepe is not None:
        height, width = size
        grid_values = v[:, prefix:].reshape(batch, height, width, heads * dim_v)
        out[:, prefix:].view(batch, height, width, heads * dim_v).add_(lepe_channels_last(grid_values, *lepe))


def _block_part(
    out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    prefix: int,
    block: BlockSpec,
    lepe: LePEWeights | None,
    dropout_p: float,
    fused: bool,
) -> None:
    """Write the block heads' output into ``out`` ``[B, P + H * W, heads_b * d_v]``."""
    batch, _, heads, dim_v = v.shape
    channels = heads * dim_v
    height, width = size
    bh, bw = resolve_block(size, block)
    grids = [x[:, prefix:].reshape(batch, height, width, heads, x.shape[-1]) for x in (q, k, v)]
    out_grid = out[:, prefix:].view(batch, height, width, channels)
    for row_start, row_stop, rh in _edge_bands(height, bh):
        for col_start, col_stop, rw in _edge_bands(width, bw):
            q_blocks, k_blocks, v_blocks = (
                _gather_blocks(grid[:, row_start:row_stop, col_start:col_stop], rh, rw) for grid in grids
            )
            # SDPA reads [blocks, heads, rh * rw, d] views of the gathered [blocks, rh * rw, heads, d].
            attended = softmax_attention(
                q_blocks.transpose(1, 2),
                k_blocks.transpose(1, 2),
                v_blocks.transpose(1, 2),
                dropout_p=dropout_p,
                fused=fused,
            ).transpose(1, 2)
            # [blocks, rh, rw, heads_b * d_v]
            rows, cols = (row_stop - row_start) // rh, (col_stop - col_start) // rw
            result = attended.reshape(batch * rows * cols, rh, rw, channels)
            if lepe is not None:
                result = result + lepe_channels_last(v_blocks.reshape(batch * rows * cols, rh, rw, channels), *lepe)
            region = out_grid[:, row_start:row_stop, col_start:col_stop].view(batch, rows, rh, cols, rw, channels)
            region.copy_(result.view(batch, rows, cols, rh, rw, channels).permute(0, 1, 3, 2, 4, 5))
    if prefix:
        # The prefix queries of the block heads attend every key, exact softmax.
        attended = softmax_attention(
            q[:, :prefix].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, fused=fused
        )
        out[:, :prefix].view(batch, prefix, heads, dim_v).copy_(attended.transpose(1, 2))


def elfatt_tokens_last(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    *,
    block: BlockSpec,
    num_global_heads: int,
    global_lepe: LePEWeights | None = None,
    block_lepe: LePEWeights | None = None,
    num_prefix_tokens: int = 0,
    dropout_p: float = 0.0,
    fused: bool = True,
    backend: str = "auto",
) -> Tensor:
    """:func:`~elfatt.functional.elfatt` on ``[B, P + H * W, heads, d]`` tensors, heads merged in the result.

    Args:
        q, k, v: ``[B, P + H * W, heads, d]`` (``v`` may have its own head dim), any strides with a unit last
            one: slices of a qkv linear's output are read in place. ``P`` prefix tokens come first.
        size: the grid ``(H, W)`` of the last ``H * W`` tokens.
        block: block of the softmax heads, as for :func:`~elfatt.functional.elfatt`.
        num_global_heads: how many heads, first, are global linear heads.
        global_lepe, block_lepe: ``(weight, bias)`` of each part's LePE, or None.
        num_prefix_tokens: ``P >= 0``, attended as :func:`~elfatt.functional.elfatt` says.
        dropout_p, fused, backend: as for :func:`~elfatt.functional.elfatt`.

    Returns:
        ``[B, P + H * W, heads * d_v]``, channel ``head * d_v + j``: what ``elfatt(...).transpose(1, 2)`` gives,
        merged, without the permutes.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v must be [B, tokens, heads, d] with the same first three dims (and q, k the same d), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    check_tokens(q[:, num_prefix_tokens:].transpose(1, 2), size, "q after its prefix tokens")
    batch, tokens, heads, _ = q.shape
    dim_v = v.shape[-1]
    out = q.new_empty(batch, tokens, heads * dim_v)
    split = num_global_heads * dim_v
    if num_global_heads:
        global_heads = slice(0, num_global_heads)
        _global_part(
            out[..., :split], q[:, :, global_heads], k[:, :, global_heads], v[:, :, global_heads], size,
            num_prefix_tokens, global_lepe, backend,
        )  # fmt: skip
    if num_global_heads < heads:
        block_heads = slice(num_global_heads, heads)
        _block_part(
            out[..., split:], q[:, :, block_heads], k[:, :, block_heads], v[:, :, block_heads], size,
            num_prefix_tokens, block, block_lepe, dropout_p, fused,
        )  # fmt: skip
    return out
