"""The op, forward and gradients, against the float64 reference: every case, dtype and form (the CPU's padded
layout, CUDA's regions layout, the export form), with LePE, prefix tokens, plain matmuls and a given scale."""

from __future__ import annotations

import pytest
import torch
from cases import CASE_IDS, CASES, Case
from conftest import DTYPE_IDS, DTYPES, assert_close

import elfatt
import elfatt.ops.reference as reference
from elfatt.ops import BlockCount
from elfatt.ops.attend import attend
from elfatt.ops.blocks import encode_block, resolve_block
from elfatt.ops.export_form import attend_traced

FORMS = ["padded", "regions", "export"]


def _lepe_weights(channels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(channels, 1, 3, 3, generator=generator, dtype=torch.float64) / 3
    return weight, torch.randn(channels, generator=generator, dtype=torch.float64)


def _run(form: str, q, k, v, size, block, num_global, global_lepe, block_lepe, prefix=0, scale=None, fused=True):
    """One form of the op on already checked inputs."""
    args = (q, k, v, size, encode_block(block), num_global, global_lepe, block_lepe, prefix, scale, 0.0, fused)
    if form == "export":
        return attend_traced(*args)
    return attend(*args, "torch", form == "padded")


def _compare(case: Case, dtype, form, generator, *, prefix=0, num_global=None, scale=None, fused=True, block=None):
    """Output and the gradients of qkv and both LePEs of one form against the reference."""
    block = case.block if block is None else block
    num_global = case.heads // 2 if num_global is None else num_global
    split = num_global * case.dim
    weight, bias = _lepe_weights(case.heads * case.dim, generator)
    qkv, _ = case.qkv(generator, dtype, prefix=prefix)
    leaves = [x.detach().to(dtype).requires_grad_() for x in (qkv, weight, bias)]
    ref_leaves = [x.detach().double().requires_grad_() for x in (qkv, weight, bias)]

    def lepes(weight, bias):
        global_lepe = (weight[:split], bias[:split]) if num_global else None
        return global_lepe, ((weight[split:], bias[split:]) if num_global < case.heads else None)

    out = _run(form, *leaves[0].unbind(2), case.size, block, num_global, *lepes(*leaves[1:]), prefix, scale, fused)
    concrete = resolve_block(case.size, block)
    ref = reference.elfatt_tokens_last(
        *ref_leaves[0].unbind(2), case.size, concrete, num_global, *lepes(*ref_leaves[1:]), prefix, scale
    )
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for name, leaf, ref_leaf in zip(("qkv", "LePE weight", "LePE bias"), leaves, ref_leaves, strict=True):
        assert_close(leaf.grad, ref_leaf.grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(case, dtype, form, generator):
    _compare(case, dtype, form, generator)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("prefix", [1, 3])
@pytest.mark.parametrize("block", [(2, 3), (None, 2), BlockCount(2, 2)], ids=["2x3", "stripes", "count"])
def test_prefix_tokens(block, prefix, form, generator):
    _compare(Case(2, 4, 5, 7, 5, block), torch.float32, form, generator, prefix=prefix, block=block)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("num_global", [0, 3], ids=["blocks-only", "global-only"])
def test_one_part_alone(num_global, form, generator):
    _compare(Case(2, 3, 6, 5, 4, (4, 4)), torch.float32, form, generator, num_global=num_global, prefix=1)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
def test_scale_and_plain_matmuls(fused, form, generator):
    _compare(Case(3, 4, 7, 9, 6, (3, 4)), torch.float32, form, generator, scale=0.3, fused=fused, prefix=2)


@pytest.mark.parametrize("case", [Case(3, 6, 9, 13, 12, 5), Case(1, 5, 12, 1, 9, (5, 1))], ids=lambda c: str(c))
@pytest.mark.parametrize("counts", [(2, 2), (3, 1), (1, 4), (5, 5)], ids=lambda c: f"{c[0]}x{c[1]}")
def test_block_count(case, counts, generator):
    _compare(case, torch.float32, "padded", generator, block=BlockCount(*counts))


@pytest.mark.parametrize("prefix", [0, 2])
def test_gradcheck(prefix, generator):
    size, heads, dim = (3, 4), 2, 2
    weight, bias = (x.requires_grad_() for x in _lepe_weights(heads * dim, generator))
    qkv = torch.randn(1, prefix + 12, 3, heads, dim, generator=generator, dtype=torch.float64, requires_grad=True)

    def op(qkv, weight, bias):
        lepes = dict(global_lepe=(weight[:dim], bias[:dim]), block_lepe=(weight[dim:], bias[dim:]))
        return elfatt.elfatt(*qkv.unbind(2), size, block=(2, 3), num_global_heads=1, num_prefix_tokens=prefix, **lepes)

    assert torch.autograd.gradcheck(op, (qkv, weight, bias))


def test_separate_tensors_match_views_of_one(generator):
    """q, k, v from three projections (diffusers') take the three-gather path; the result is the same."""
    _, (q, k, v) = Case(2, 4, 6, 7, 8, 4).qkv(generator, torch.float32)
    separate = [x.detach().clone() for x in (q, k, v)]
    expected = elfatt.elfatt(q, k, v, (6, 7), block=4)
    assert_close(elfatt.elfatt(*separate, (6, 7), block=4), expected.double(), torch.float64)


def test_public_entry_defaults_to_half_the_heads(generator):
    _, (q, k, v) = Case(1, 3, 5, 6, 4, 8).qkv(generator, torch.float64)
    out = elfatt.elfatt(q, k, v, (5, 6))
    ref = reference.elfatt_tokens_last(q, k, v, (5, 6), (5, 6), 1)
    assert_close(out, ref, torch.float64)
