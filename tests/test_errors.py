"""Bad input raises a ValueError or TypeError that names the problem."""

from __future__ import annotations

import pytest
import torch

import elfatt
from elfatt.ops import global_head_count


def _qkv(shape=(1, 12, 2, 4), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda q, k, v: elfatt.elfatt(q[0], k[0], v[0], (3, 4), block=2), ValueError, "rank 4"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (4, 4), block=2), ValueError, "does not match the 12 tokens"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), num_prefix_tokens=1), ValueError, "grid make 13"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), num_prefix_tokens=-1), ValueError, "num_prefix_tokens"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (0, 12), block=2), ValueError, "empty"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3.0, 4), block=2), TypeError, "pair of ints"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, 12, block=2), TypeError, "pair of ints"),
        (lambda q, k, v: elfatt.elfatt(q, k[..., :3], v, (3, 4), block=2), ValueError, "same first three"),
        (lambda q, k, v: elfatt.elfatt(q, k, v[:, :, :1], (3, 4), block=2), ValueError, "same first three"),
        (lambda q, k, v: elfatt.elfatt(q, k.double(), v, (3, 4), block=2), TypeError, "share a dtype"),
        (lambda q, k, v: elfatt.elfatt(q, k, v.long(), (3, 4), block=2), TypeError, "floating"),
        (lambda q, k, v: elfatt.elfatt(q, k, v.numpy(), (3, 4), block=2), TypeError, "torch.Tensor"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block=0), ValueError, "block sides must be >= 1"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block=(2, -1)), ValueError, "block sides must be >= 1"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block=2.5), TypeError, "block must be"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block=(2, 2, 2)), TypeError, "block must be"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), num_global_heads=3), ValueError, r"in \[0, 2\]"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), dropout_p=1.0), ValueError, "dropout_p"),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), backend="cuda"), ValueError, "unknown backend"),
        (
            lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block=2, global_lepe=(torch.randn(8, 1, 3, 3), None)),
            ValueError,
            "depthwise kernel",
        ),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block_lepe=(torch.randn(4, 1, 2, 2), None)), ValueError, "odd"),
        (
            lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block_lepe=(torch.randn(4, 1, 3, 3), torch.randn(3))),
            ValueError,
            "bias",
        ),
        (lambda q, k, v: elfatt.elfatt(q, k, v, (3, 4), block_lepe=torch.randn(4)), TypeError, "pair"),
        (lambda q, k, v: global_head_count(4, 0.3), ValueError, "cannot be split"),
        (lambda q, k, v: global_head_count(4, 1.5), ValueError, r"lie in \[0, 1\]"),
    ],
    ids=lambda p: p if isinstance(p, str) else None,
)
def test_op_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(*_qkv())


def test_mismatched_devices_are_named():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one device"):
        elfatt.elfatt(q, k, v.to("meta"), (3, 4), block=2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(dim=30, num_heads=4), ValueError, "divisible by num_heads"),
        (dict(dim=24, num_heads=3), ValueError, "cannot be split"),
        (dict(dim=24, num_heads=4, block=4, num_blocks=2), ValueError, "give only block="),
        (dict(dim=24, num_heads=4, block=0), ValueError, ">= 1"),
        (dict(dim=24, num_heads=4, block=elfatt.BlockCount(1, 0)), ValueError, ">= 1"),
        (dict(dim=24, num_heads=4, lepe_kernel=2), ValueError, "odd"),
    ],
)
def test_module_rejects_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        elfatt.ELFATTAttention(**kwargs)


@pytest.mark.parametrize(
    "shape, size, message",
    [((2, 12, 16), (3, 5), "does not match the 12 tokens"), ((2, 12, 8), (3, 4), "C=16"), ((12, 16), (3, 4), "C=16")],
)
def test_module_rejects_bad_input(shape, size, message):
    with pytest.raises(ValueError, match=message):
        elfatt.ELFATTAttention(16, 2)(torch.randn(shape), size)
