"""How many aten ops a call issues, as torch.profiler lists them: all of them (views and nested ops included),
and those that compute or copy (on a GPU, each one a kernel launch).

An op computes or copies unless it is a view, an allocation, or a composite that only calls other ops
(``linear`` calls ``addmm``, ``clone`` calls ``copy_``, ``softmax`` calls ``_softmax``): so timm's ``Attention``
counts its two ``addmm``, their two bias ``copy_`` and one flash-attention kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch.profiler import ProfilerActivity, profile

__all__ = ["OpCount", "count_ops"]

VIEWS = {
    "alias", "as_strided", "chunk", "detach", "diagonal", "expand", "expand_as", "flatten", "lift_fresh", "narrow",
    "permute", "reshape", "_reshape_alias", "resolve_conj", "resolve_neg", "select", "slice", "split",
    "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unflatten", "unsqueeze", "_unsafe_view", "view",
    "view_as", "contiguous", "to",
}  # fmt: skip
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "promote_types"}
COMPOSITES = {
    "linear", "matmul", "conv2d", "convolution", "_convolution", "scaled_dot_product_attention", "softmax",
    "dropout", "clone", "einsum", "pad", "constant_pad_nd", "layer_norm",
}  # fmt: skip


class OpCount(NamedTuple):
    """Aten ops of one call: all that the profiler lists, and those that compute or copy."""

    total: int
    compute: int


def count_ops(fn: Callable[[], object]) -> OpCount:
    """The aten ops of one call of ``fn`` (after one warm-up call, so that caches such as ELFATT's plans are made)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [event.name.removeprefix("aten::") for event in prof.events() if event.name.startswith("aten::")]
    compute = [name for name in names if name not in VIEWS | ALLOCATIONS | COMPOSITES]
    return OpCount(len(names), len(compute))
