"""elfatt_tokens_last, the layer's path, on strided views of a qkv tensor: against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from cases import CASE_IDS, CASES, Case
from conftest import DTYPE_IDS, DTYPES, assert_close

import elfatt
import elfatt.reference as reference
from elfatt.tokens_last import elfatt_tokens_last


def _qkv_views(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, N, 3, heads, d]`` to the three ``[B, N, heads, d]`` views a layer's qkv linear gives."""
    q, k, v = qkv.unbind(2)
    return q, k, v


def _lepe_weights(channels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(channels, 1, 3, 3, generator=generator, dtype=torch.float64) / 3
    return weight, torch.randn(channels, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_on_qkv_views(case: Case, dtype, generator):
    global_heads = case.heads // 2
    channels = case.heads * case.dim
    split = global_heads * case.dim
    weight, bias = _lepe_weights(channels, generator)
    qkv = torch.randn(case.batch, case.tokens, 3, case.heads, case.dim, generator=generator, dtype=torch.float64)
    leaves = [x.to(dtype).requires_grad_() for x in (qkv, weight, bias)]
    ref_leaves = [x.clone().requires_grad_() for x in (qkv, weight, bias)]

    def run(qkv, weight, bias):
        return elfatt_tokens_last(
            *_qkv_views(qkv),
            case.size,
            block=case.block,
            num_global_heads=global_heads,
            global_lepe=(weight[:split], bias[:split]) if global_heads else None,
            block_lepe=(weight[split:], bias[split:]),
        )

    def run_reference(qkv, weight, bias):
        q, k, v = (x.transpose(1, 2) for x in _qkv_views(qkv))
        lepes = ((weight[:split], bias[:split]) if global_heads else None, (weight[split:], bias[split:]))
        out = reference.elfatt(q, k, v, case.size, case.concrete_block, global_heads, *lepes)
        return out.transpose(1, 2).reshape(case.batch, case.tokens, channels)

    out, ref = run(*leaves), run_reference(*ref_leaves)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for name, leaf, ref_leaf in zip(("qkv", "LePE weight", "LePE bias"), leaves, ref_leaves, strict=True):
        assert_close(leaf.grad, ref_leaf.grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("prefix", [1, 3])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
@pytest.mark.parametrize("block", [(2, 3), (None, 2), elfatt.BlockCount(2, 2)], ids=["2x3", "stripes", "count"])
def test_prefix_tokens_match_the_head_major_op(prefix, fused, block, generator):
    """With a class token and registers first; the head-major op is itself checked against a float64 reference
    with prefix tokens (tests/models/test_vit_elfatt.py)."""
    batch, heads, dim, size = 2, 4, 5, (5, 7)
    tokens = prefix + size[0] * size[1]
    weight, bias = _lepe_weights(heads * dim, generator)
    qkv = torch.randn(batch, tokens, 3, heads, dim, generator=generator, dtype=torch.float64, requires_grad=True)
    lepes = dict(global_lepe=(weight[: 2 * dim], bias[: 2 * dim]), block_lepe=(weight[2 * dim :], bias[2 * dim :]))
    out = elfatt_tokens_last(
        *_qkv_views(qkv), size, block=block, num_global_heads=2, num_prefix_tokens=prefix, fused=fused, **lepes
    )
    q, k, v = (x.transpose(1, 2) for x in _qkv_views(qkv))
    expected = elfatt.elfatt(q, k, v, size, block=block, split=0.5, num_prefix_tokens=prefix, fused=fused, **lepes)
    assert_close(out, expected.transpose(1, 2).reshape(batch, tokens, heads * dim), torch.float64)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    (qkv_grad,) = torch.autograd.grad(out, qkv, grad)
    (expected_grad,) = torch.autograd.grad(expected, qkv, grad.view(batch, tokens, heads, dim).transpose(1, 2))
    assert_close(qkv_grad, expected_grad, torch.float64, "gradient of qkv")


@pytest.mark.parametrize("prefix", [0, 2])
def test_gradcheck(prefix, generator):
    size, heads, dim = (3, 4), 2, 2
    weight, bias = _lepe_weights(heads * dim, generator)
    weight.requires_grad_(), bias.requires_grad_()
    qkv = torch.randn(1, prefix + 12, 3, heads, dim, generator=generator, dtype=torch.float64, requires_grad=True)

    def layer_path(qkv, weight, bias):
        lepes = dict(global_lepe=(weight[:dim], bias[:dim]), block_lepe=(weight[dim:], bias[dim:]))
        return elfatt_tokens_last(
            *_qkv_views(qkv), size, block=(2, 3), num_global_heads=1, num_prefix_tokens=prefix, **lepes
        )

    assert torch.autograd.gradcheck(layer_path, (qkv, weight, bias))


def test_bad_shapes_raise_clear_errors():
    q = torch.randn(1, 13, 2, 4)
    with pytest.raises(ValueError, match="tokens, heads, d"):
        elfatt_tokens_last(q, q[..., :3], q, (3, 4), block=2, num_global_heads=1)
    with pytest.raises(ValueError, match="after its prefix tokens"):
        elfatt_tokens_last(q, q, q, (3, 4), block=2, num_global_heads=1)
    assert elfatt_tokens_last(q, q, q, (3, 4), block=2, num_global_heads=1, num_prefix_tokens=1).shape == (1, 13, 8)
