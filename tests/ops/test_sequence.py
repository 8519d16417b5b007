"""ELFATT along sequences with key padding, forward and gradients, against the float64 reference: both block layouts
(the CPU's one masked call, CUDA's mask-free blocks apart), padding at the end and anywhere, odd lengths."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPE_IDS, DTYPES, assert_close

import elfatt
import elfatt.ops.reference as reference
import elfatt.ops.sequence as sequence


def _inputs(generator, batch, length, heads, dim, dtype=torch.float64):
    qkv = torch.randn(batch, length, 3, heads, dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(heads * dim, 1, 3, 3, generator=generator, dtype=torch.float64) / 3
    bias = torch.randn(heads * dim, generator=generator, dtype=torch.float64)
    return [x.to(dtype).requires_grad_() for x in (qkv, weight, bias)]


def _right_padding(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]


def _compare(generator, *, length, block, mask, heads=4, num_global=None, dim=5, dtype=torch.float32, lepe=True):
    batch = mask.shape[0] if mask is not None else 2
    num_global = heads // 2 if num_global is None else num_global
    leaves = _inputs(generator, batch, length, heads, dim, dtype)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]

    def lepes(weight, bias):
        split = num_global * dim
        if not lepe:
            return None, None
        return (weight[:split], bias[:split]), (weight[split:], bias[split:])

    global_lepe, block_lepe = lepes(*leaves[1:])
    out = elfatt.elfatt_sequence(
        *leaves[0].unbind(2), block=block, num_global_heads=num_global, global_lepe=global_lepe,
        block_lepe=block_lepe, key_padding_mask=mask,
    )  # fmt: skip
    q, k, v = (x.transpose(1, 2) for x in ref_leaves[0].unbind(2))
    ref = reference.elfatt_sequence(q, k, v, min(block, length), num_global, *lepes(*ref_leaves[1:]), mask)
    ref = ref.transpose(1, 2)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    names = ("qkv", "LePE weight", "LePE bias") if lepe else ("qkv",)
    for name, leaf, ref_leaf in zip(names, leaves, ref_leaves, strict=False):
        assert_close(leaf.grad, ref_leaf.grad, dtype, f"gradient of {name}")


@pytest.fixture(params=["one-call", "mask-free-blocks"])
def layout(request, monkeypatch) -> str:
    """The CPU's layout, or CUDA's (blocks without padding mask-free, apart), run here on the CPU."""
    if request.param == "mask-free-blocks":
        monkeypatch.setattr(sequence, "padded_layout", lambda device: False)
    return request.param


@pytest.mark.parametrize(
    ("length", "block", "lengths"),
    [(37, 8, [37, 20, 1]), (30, 6, [30, 12]), (13, 64, [9, 13]), (9, 1, [4, 9])],
    ids=["37-by-8", "30-by-6-whole-blocks-padded", "block-past-length", "block-1"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_right_padding_matches_reference(length, block, lengths, dtype, layout, generator):
    _compare(generator, length=length, block=block, mask=_right_padding(lengths, length), dtype=dtype)


def test_padding_anywhere(layout, generator):
    mask = torch.rand(3, 29, generator=generator) < 0.4
    mask[0] = False
    _compare(generator, length=29, block=5, mask=mask, heads=3)


@pytest.mark.parametrize("num_global", [0, 3], ids=["blocks-only", "global-only"])
def test_one_part_alone(num_global, layout, generator):
    _compare(generator, length=23, block=4, mask=_right_padding([23, 11], 23), heads=3, num_global=num_global)


def test_without_lepe_and_without_mask(generator):
    _compare(generator, length=21, block=4, mask=None, lepe=False)
    _compare(generator, length=21, block=4, mask=None, heads=3)


def test_mask_with_no_padding_matches_no_mask(generator):
    (qkv, weight, bias) = _inputs(generator, 2, 19, 4, 3)
    options = dict(block=4, global_lepe=(weight[:6], bias[:6]), block_lepe=(weight[6:], bias[6:]))
    unmasked = elfatt.elfatt_sequence(*qkv.unbind(2), **options)
    masked = elfatt.elfatt_sequence(*qkv.unbind(2), key_padding_mask=torch.zeros(2, 19, dtype=torch.bool), **options)
    assert_close(masked, unmasked.detach(), torch.float64)


def test_padded_tokens_change_nothing(generator):
    """Whatever the padded positions hold, the real positions' outputs and the padded ones' zeros stay."""
    (qkv, weight, bias) = _inputs(generator, 2, 26, 4, 3, torch.float32)
    mask = _right_padding([26, 15], 26)
    options = dict(block=8, global_lepe=(weight[:6], bias[:6]), block_lepe=(weight[6:], bias[6:]))
    out = elfatt.elfatt_sequence(*qkv.unbind(2), key_padding_mask=mask, **options)
    changed = qkv.detach().clone()
    changed[1, 15:] = 100 * torch.randn(changed[1, 15:].shape, generator=generator)
    again = elfatt.elfatt_sequence(*changed.unbind(2), key_padding_mask=mask, **options)
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1, 15:], torch.zeros_like(out[1, 15:]))


def test_all_padding_gives_zeros_and_finite_gradients(layout, generator):
    (qkv, weight, bias) = _inputs(generator, 2, 10, 2, 3, torch.float32)
    mask = _right_padding([10, 0], 10)
    out = elfatt.elfatt_sequence(*qkv.unbind(2), block=4, key_padding_mask=mask, block_lepe=(weight[3:], bias[3:]))
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isfinite(qkv.grad).all()


def test_gradcheck(generator):
    (qkv, weight, bias) = _inputs(generator, 2, 7, 2, 2)
    mask = _right_padding([7, 4], 7)

    def op(qkv, weight, bias):
        lepes = dict(global_lepe=(weight[:2], bias[:2]), block_lepe=(weight[2:], bias[2:]))
        return elfatt.elfatt_sequence(*qkv.unbind(2), block=3, key_padding_mask=mask, **lepes)

    assert torch.autograd.gradcheck(op, (qkv, weight, bias))


def test_compiled_matches_eager(generator):
    (qkv, _, _) = _inputs(generator, 2, 18, 4, 4, torch.float32)
    mask = _right_padding([18, 7], 18)

    def op(qkv, mask):
        return elfatt.elfatt_sequence(*qkv.unbind(2), block=4, key_padding_mask=mask)

    expected = op(qkv, mask)
    compiled = torch.compile(op, backend="aot_eager", fullgraph=True)(qkv, mask)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mask", "block", "error", "message"),
    [
        (torch.zeros(2, 9, dtype=torch.int64), 4, TypeError, "bool"),
        (torch.zeros(2, 8, dtype=torch.bool), 4, ValueError, r"\[B, L\] = \(2, 9\)"),
        ([[False] * 9] * 2, 4, TypeError, "bool tensor"),
        (None, 0, ValueError, "block must be an int >= 1"),
        (None, 2.5, ValueError, "block must be an int >= 1"),
    ],
    ids=["int-mask", "short-mask", "list-mask", "block-0", "float-block"],
)
def test_bad_input_is_named(mask, block, error, message, generator):
    q = torch.randn(2, 9, 2, 4, generator=generator)
    with pytest.raises(error, match=message):
        elfatt.elfatt_sequence(q, q, q, block=block, key_padding_mask=mask)
