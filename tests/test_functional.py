"""Forward and gradients of every functional op against the float64 reference, over the shape and dtype grid."""

from __future__ import annotations

import pytest
import torch
from cases import CASE_IDS, CASES, Case
from conftest import DTYPE_IDS, DTYPES, assert_close

import elfatt
import elfatt.reference as reference


def _lepe_weights(channels: int, generator: torch.Generator, dtype: torch.dtype):
    weight = torch.randn(channels, 1, 3, 3, generator=generator, dtype=torch.float64) / 3
    bias = torch.randn(channels, generator=generator, dtype=torch.float64)
    return weight.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()


def _check_against_reference(fast, slow, inputs, dtype, generator):
    """Compare ``fast(*inputs)`` with ``slow`` on float64 copies: outputs, then gradients of every input."""
    out = fast(*inputs)
    assert out.dtype == dtype
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    ref = slow(*ref_inputs)
    assert_close(out, ref, dtype)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for i, (x, x_ref) in enumerate(zip(inputs, ref_inputs, strict=True)):
        if x_ref.grad is None:
            assert x.grad is None, f"input {i} is unused by the reference but got a gradient"
            continue
        assert_close(x.grad, x_ref.grad, dtype, f"gradient of input {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_global_linear_attention(case: Case, dtype, generator):
    _check_against_reference(
        elfatt.global_linear_attention, reference.global_linear_attention, case.qkv(generator, dtype), dtype, generator
    )


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_block_attention(case: Case, dtype, fused, generator, block_form):
    _check_against_reference(
        lambda q, k, v: elfatt.block_attention(q, k, v, case.size, case.block, fused=fused),
        lambda q, k, v: reference.block_attention(q, k, v, case.size, case.concrete_block),
        case.qkv(generator, dtype),
        dtype,
        generator,
    )


@pytest.mark.parametrize("per_block", [False, True], ids=["grid", "blocks"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_lepe(case: Case, dtype, per_block, generator, block_form):
    v = case.qkv(generator, dtype)[2]
    weight, bias = _lepe_weights(case.heads * case.dim, generator, dtype)
    block, ref_block = (case.block, case.concrete_block) if per_block else (None, None)
    _check_against_reference(
        lambda v, w, b: elfatt.lepe(v, case.size, w, b, block=block),
        lambda v, w, b: reference.lepe(v, case.size, w, b, ref_block),
        [v, weight, bias],
        dtype,
        generator,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_elfatt(case: Case, dtype, generator, block_form):
    global_heads = case.heads // 2
    global_lepe = _lepe_weights(global_heads * case.dim, generator, dtype)
    block_lepe = _lepe_weights((case.heads - global_heads) * case.dim, generator, dtype)

    def fast(q, k, v, wg, bg, wb, bb):
        lepes = dict(global_lepe=(wg, bg), block_lepe=(wb, bb))
        return elfatt.elfatt(q, k, v, case.size, block=case.block, split=case.global_split, **lepes)

    def slow(q, k, v, wg, bg, wb, bb):
        return reference.elfatt(q, k, v, case.size, case.concrete_block, global_heads, (wg, bg), (wb, bb))

    _check_against_reference(fast, slow, [*case.qkv(generator, dtype), *global_lepe, *block_lepe], dtype, generator)


@pytest.mark.parametrize("split", [0.0, 1.0], ids=["blocks-only", "global-only"])
def test_elfatt_one_part_only(split, generator):
    case = Case(3, 4, 5, 6, 8, (2, 4))
    q, k, v = case.qkv(generator, torch.float32)
    out = elfatt.elfatt(q, k, v, case.size, block=case.block, split=split)
    ref = reference.elfatt(q, k, v, case.size, case.concrete_block, int(split * case.heads))
    assert_close(out, ref, torch.float32)


GRADCHECK_CASES = [Case(1, 2, 3, 5, 3, (2, 2)), Case(2, 2, 4, 3, 2, (None, 2))]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[str(c) for c in GRADCHECK_CASES])
def test_gradcheck(case: Case, generator, block_form):
    q, k, v = case.qkv(generator, torch.float64)
    weight, bias = _lepe_weights(case.heads * case.dim, generator, torch.float64)
    half = case.heads // 2 * case.dim
    ops = {
        "global_linear": lambda q, k, v: elfatt.global_linear_attention(q, k, v),
        "block": lambda q, k, v: elfatt.block_attention(q, k, v, case.size, case.block),
        "block_matmul": lambda q, k, v: elfatt.block_attention(q, k, v, case.size, case.block, fused=False),
        "lepe_blocks": lambda q, k, v: elfatt.lepe(v, case.size, weight, bias, block=case.block),
        "elfatt": lambda q, k, v: elfatt.elfatt(
            q,
            k,
            v,
            case.size,
            block=case.block,
            global_lepe=(weight[:half], bias[:half]),
            block_lepe=(weight[half:], bias[half:]),
        ),
    }
    for name, op in ops.items():
        assert torch.autograd.gradcheck(op, (q, k, v)), name
    assert torch.autograd.gradcheck(lambda w, b: elfatt.lepe(v, case.size, w, b, block=case.block), (weight, bias)), (
        "lepe weights"
    )


@pytest.mark.parametrize("block", [None, (3, 2)], ids=["grid", "blocks"])
def test_lepe_rectangular_kernel(block, generator):
    case = Case(2, 3, 7, 5, 4, (3, 2))
    v = case.qkv(generator, torch.float32)[2]
    weight = torch.randn(12, 1, 3, 5, generator=generator, dtype=torch.float64).float().requires_grad_()
    bias = torch.randn(12, generator=generator).requires_grad_()
    _check_against_reference(
        lambda v, w, b: elfatt.lepe(v, case.size, w, b, block=block),
        lambda v, w, b: reference.lepe(v, case.size, w, b, block),
        [v, weight, bias],
        torch.float32,
        generator,
    )


COUNT_CASES = [
    (Case(2, 2, 5, 9, 4, None), (4, 2)),
    (Case(1, 3, 7, 3, 5, None), (3, 5)),
    (Case(3, 2, 2, 2, 3, None), (1, 1)),
]


@pytest.mark.parametrize(
    "case, counts", COUNT_CASES, ids=[f"{c.height}x{c.width}-count{n[0]}x{n[1]}" for c, n in COUNT_CASES]
)
def test_block_count_spec(case: Case, counts, generator, block_form):
    """A BlockCount attends as the block it resolves to, also where its trailing blocks lie past the grid (5 rows
    in 4 blocks of 2: the export form keeps an empty fourth block)."""
    q, k, v = case.qkv(generator, torch.float32)
    weight, bias = _lepe_weights(case.heads * case.dim, generator, torch.float32)
    spec = elfatt.BlockCount(*counts)
    concrete = elfatt.block_from_count(case.size, counts)
    assert_close(
        elfatt.block_attention(q, k, v, case.size, spec),
        reference.block_attention(q, k, v, case.size, concrete),
        torch.float32,
    )
    out = elfatt.lepe(v, case.size, weight, bias, block=spec)
    assert_close(out, reference.lepe(v, case.size, weight, bias, concrete), torch.float32)


def test_one_head_split_rule():
    """Whole counts exactly, fractions raise, or round down where heads are fixed (SD 2's 5-head layers: 2)."""
    assert elfatt.global_head_count(8, 0.25) == 2 and elfatt.global_head_count(3, elfatt.functional.half_split(3)) == 1
    assert elfatt.global_head_count(5, 0.5, round_down=True) == 2
    with pytest.raises(ValueError, match="not a whole number"):
        elfatt.global_head_count(5, 0.5)
