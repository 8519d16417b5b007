"""Block specs and the plan: resolution, counts, the plan's gather and scatter, one SDPA call per chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cases import Case
from conftest import assert_close

import elfatt
import elfatt.ops.reference as reference
from elfatt.ops.blocks import BlockCount, encode_block, normalize_block, resolve_block
from elfatt.ops.plan import plan_for


@pytest.mark.parametrize(
    "size, block, expected",
    [
        ((7, 5), 3, (3, 3)),
        ((7, 5), (2, None), (2, 5)),
        ((7, 5), (None, 4), (7, 4)),
        ((7, 5), (None, None), (7, 5)),
        ((3, 4), 8, (3, 4)),
        ((1, 1), (5, 5), (1, 1)),
        ((56, 56), BlockCount(2, 2), (28, 28)),
        ((5, 9), BlockCount(4, 2), (2, 5)),
        ((3, 2), BlockCount(8, 8), (1, 1)),
    ],
)
def test_resolve_block(size, block, expected):
    assert resolve_block(size, block) == expected


def test_a_block_spec_has_one_normal_form():
    assert normalize_block(4) == (4, 4) and normalize_block((2, None)) == (2, None)
    counted = normalize_block(BlockCount(4, 1))
    assert counted == BlockCount(4, 1) and isinstance(counted, BlockCount)
    assert resolve_block((56, 56), BlockCount(4, 1)) == (14, 56)
    with pytest.raises(ValueError, match=">= 1"):
        normalize_block((0, 2))


@pytest.mark.parametrize(
    "block, error, message",
    [
        (0, ValueError, ">= 1"),
        ((2, -1), ValueError, ">= 1"),
        (2.5, TypeError, "block must be"),
        ((2, 2, 2), TypeError, "block must be"),
        (True, TypeError, "block must be"),
        (BlockCount(None, 2), TypeError, "must be ints"),
        (BlockCount(0, 2), ValueError, ">= 1"),
    ],
)
def test_bad_specs_are_named(block, error, message):
    with pytest.raises(error, match=message):
        encode_block(block)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "regions"])
@pytest.mark.parametrize("size, block", [((7, 10), (3, 4)), ((8, 8), (4, 4)), ((5, 1), (2, 2)), ((1, 9), (1, 9))])
def test_plan_scatter_inverts_gather(size, block, padded):
    """Every grid token is gathered and comes back to its own place; positions past the grid are masked."""
    batch, prefix = 2, 3
    tokens = prefix + size[0] * size[1]
    block = resolve_block(size, block)
    plan = plan_for(batch, tokens, prefix, size, block, padded, torch.device("cpu"), torch.float32)
    grid_rows = torch.arange(batch * tokens).view(batch, tokens)[:, prefix:].flatten()
    assert torch.equal(plan.gather[plan.scatter], grid_rows)
    assert plan.chunks[-1].stop == plan.gather.numel()
    divides = size[0] % block[0] == 0 and size[1] % block[1] == 0
    bands = [(length >= side) + (length % side > 0) for length, side in zip(size, block, strict=True)]
    assert len(plan.chunks) == (1 if padded else bands[0] * bands[1])
    assert (plan.key_bias is None) == (divides or not padded)
    if plan.on_grid is not None:
        assert int(plan.on_grid.sum()) == batch * size[0] * size[1]


def test_plans_are_cached():
    args = (2, 30, 0, (5, 6), (4, 4), True, torch.device("cpu"), torch.float32)
    assert plan_for(*args) is plan_for(*args)


def _record_sdpa(monkeypatch) -> list[dict]:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "regions"])
def test_sdpa_calls_per_layout(padded, monkeypatch, generator):
    """A 7x10 grid in 3x4 blocks: the regions layout makes four mask-free calls (whole blocks, right edge, bottom
    edge, corner), FlashAttention-eligible; the padded layout one call with the keys past the grid masked."""
    from elfatt.ops.attend import attend

    calls = _record_sdpa(monkeypatch)
    _, (q, k, v) = Case(2, 4, 7, 10, 8, (3, 4)).qkv(generator, torch.float32)
    attend(q, k, v, (7, 10), encode_block((3, 4)), 0, None, None, 0, None, 0.0, True, "torch", padded)
    assert len(calls) == (1 if padded else 4)
    for kwargs in calls:
        assert (kwargs["attn_mask"] is not None) == padded
        assert not kwargs.get("is_causal", False)


def test_divisible_grid_passes_no_mask(monkeypatch, generator):
    calls = _record_sdpa(monkeypatch)
    _, (q, k, v) = Case(1, 2, 8, 12, 4, 4).qkv(generator, torch.float32)
    elfatt.elfatt(q, k, v, (8, 12), block=4, num_global_heads=0)
    assert [kwargs["attn_mask"] for kwargs in calls] == [None]


def test_plain_path_does_not_call_sdpa(monkeypatch, generator):
    def forbidden(*args, **kwargs):
        raise AssertionError("fused=False must not call SDPA")

    monkeypatch.setattr(F, "scaled_dot_product_attention", forbidden)
    _, (q, k, v) = Case(1, 2, 5, 5, 4, 2).qkv(generator, torch.float32)
    elfatt.elfatt(q, k, v, (5, 5), block=2, fused=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_block_part_runs_under_flash_attention_only(dtype, generator):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    case = Case(2, 8, 37, 29, 64, (8, 8))
    _, views = case.qkv(generator, dtype)
    q, k, v = (x.detach().cuda().requires_grad_() for x in views)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = elfatt.elfatt(q, k, v, case.size, block=case.block)
        out.float().sum().backward()
    ref = reference.elfatt_tokens_last(*(x.detach().cpu() for x in (q, k, v)), case.size, case.concrete_block, 4)
    assert_close(out.cpu(), ref, dtype)
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_a_plan_made_under_inference_mode_serves_training(generator):
    """Plans are cached: one first made under torch.inference_mode must still be savable for a backward."""
    layer = elfatt.ELFATTAttention(16, 2, block=(3, 4))
    x = torch.randn(2, 1 + 5 * 7, 16, generator=generator)
    with torch.inference_mode():
        layer(x, (5, 7), 1)
    layer(x.requires_grad_(), (5, 7), 1).sum().backward()
    assert torch.isfinite(x.grad).all()
