"""The public entry of the ELFATT op: inputs checked once here, then one of three forms of the same computation.

- eager: :func:`~elfatt.ops.attend.attend`, the plan's few kernels;
- ``torch.compile``: the registered op ``elfatt::attention`` (:mod:`elfatt.ops.library`), opaque to the compiler,
  so the graph keeps the eager kernels (FlashAttention for the block heads on CUDA) and one graph serves every size;
- ``torch.export`` (ONNX): :mod:`elfatt.ops.export_form`, the arithmetic as a branch-free graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from elfatt.ops.attend import attend
from elfatt.ops.backends import resolve_backend
from elfatt.ops.blocks import BlockSpec, encode_block
from elfatt.ops.checks import check_dropout, check_global_heads, check_inputs, check_lepe
from elfatt.ops.kernels import LePEWeights

__all__ = ["elfatt"]


def elfatt(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    size: tuple[int, int],
    *,
    block: BlockSpec = 8,
    num_global_heads: int | None = None,
    global_lepe: LePEWeights | None = None,
    block_lepe: LePEWeights | None = None,
    num_prefix_tokens: int = 0,
    scale: float | None = None,
    dropout_p: float = 0.0,
    fused: bool = True,
    backend: str = "auto",
) -> Tensor:
    """ELFATT attention on the tokens-last layout a qkv linear writes, ``[B, P + H * W, heads, d]``.

    The first ``num_global_heads`` heads are global linear heads: ``softmax_row(Q) (softmax_col(K)^T V)`` over all
    tokens, in at least float32, bounded by ``max|V|``, plus LePE on the grid. The other heads are blockified
    softmax heads: exact softmax attention inside each block of the grid plus LePE per block (zero padded at block
    edges). Where a side does not divide by the block, the last blocks along it are smaller: their tokens attend
    only each other, as if the grid were padded and padded keys got no weight.

    ``P = num_prefix_tokens`` tokens before the grid (a ViT's class token, registers) take part as NATTEN's
    additional keys: the global heads attend over all ``P + H * W`` tokens (LePE added to the grid's); in the block
    heads the prefix queries attend every key with exact softmax and the grid queries their block.

    Args:
        q, k, v: ``[B, P + H * W, heads, d]``, tokens row-major on the grid after the prefix; ``v`` may have its own
            head dim. Any strides with a unit last one: slices of a qkv linear's output are read in place.
        size: the grid ``(H, W)``.
        block: the block heads' blocks: ``(bh, bw)``, an int for square windows, ``None`` for a whole side (stripes),
            or a :class:`~elfatt.ops.blocks.BlockCount`.
        num_global_heads: how many heads, first, are global linear heads; None for half, rounded down.
        global_lepe, block_lepe: ``(weight, bias)`` of each part's LePE, a depthwise ``[heads_part * d_v, 1, k, k]``
            kernel (odd sides) and a ``[heads_part * d_v]`` bias or None; None for no LePE.
        num_prefix_tokens: ``P >= 0``.
        scale: the block heads' score scale; ``d ** -0.5`` when None. The global heads have none.
        dropout_p: dropout on the block heads' attention probabilities.
        fused: block heads through ``F.scaled_dot_product_attention`` when True, plain matmuls when False.
        backend: kernels of the global heads: ``"torch"``, ``"triton"``, or ``"auto"`` (Triton on CUDA when
            installed).

    Returns:
        ``[B, P + H * W, heads, d_v]``.
    """
    height, width = check_inputs(q, k, v, size, num_prefix_tokens)
    heads, dim_v = v.shape[2], v.shape[3]
    num_global = check_global_heads(num_global_heads, heads)
    encoded = encode_block(block)
    global_lepe = check_lepe(global_lepe, num_global * dim_v, "global_lepe")
    block_lepe = check_lepe(block_lepe, (heads - num_global) * dim_v, "block_lepe")
    backend = resolve_backend(backend, q) if num_global else "torch"
    check_dropout(dropout_p)
    args = (q, k, v, (height, width), encoded, num_global, global_lepe, block_lepe, num_prefix_tokens, scale)
    if torch.compiler.is_exporting():
        from elfatt.ops.export_form import attend_traced

        return attend_traced(*args, dropout_p, fused)
    if torch.compiler.is_compiling():
        from elfatt.ops.library import attention_op

        seed = torch.randint(2**62, (), device=q.device) if dropout_p > 0.0 else None
        weights = [None if lepe is None else lepe[i] for lepe in (global_lepe, block_lepe) for i in (0, 1)]
        return attention_op(
            q, k, v, height, width, *encoded, num_global, *weights, num_prefix_tokens, scale, dropout_p, fused,
            backend, seed,
        )  # fmt: skip
    return attend(*args, dropout_p, fused, backend)
