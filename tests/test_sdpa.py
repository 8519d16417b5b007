"""The block part reaches SDPA with no mask and no bias, so FlashAttention is eligible on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cases import Case
from conftest import assert_close

import elfatt
import elfatt.reference as reference


def test_block_part_calls_sdpa_without_mask(monkeypatch, generator):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        calls.append((len(args), kwargs))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    case = Case(2, 4, 7, 10, 8, (3, 4))
    q, k, v = case.qkv(generator, torch.float32)
    elfatt.elfatt(q, k, v, case.size, block=case.block)
    # A 7x10 grid in 3x4 blocks has whole blocks, a right edge, a bottom edge and a corner: four calls.
    assert len(calls) == 4
    for num_args, kwargs in calls:
        assert num_args == 3
        assert kwargs.get("attn_mask") is None
        assert not kwargs.get("is_causal", False)


def test_plain_path_does_not_call_sdpa(monkeypatch, generator):
    def forbidden(*args, **kwargs):
        raise AssertionError("fused=False must not call SDPA")

    monkeypatch.setattr(F, "scaled_dot_product_attention", forbidden)
    q, k, v = Case(1, 2, 5, 5, 4, 2).qkv(generator, torch.float32)
    elfatt.elfatt(q, k, v, (5, 5), block=2, fused=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_block_part_runs_under_flash_attention_only(dtype, generator):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    case = Case(2, 8, 37, 29, 64, (8, 8))
    q, k, v = (x.detach().cuda().requires_grad_() for x in case.qkv(generator, dtype))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = elfatt.elfatt(q, k, v, case.size, block=case.block)
        out.float().sum().backward()
    ref = reference.elfatt(*(x.detach().cpu() for x in (q, k, v)), case.size, case.concrete_block, 4)
    assert_close(out.cpu(), ref, dtype)
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
