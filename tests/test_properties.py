"""Properties of the global part: bounded by max|v|, finite in float16 at 64K tokens with huge inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import elfatt
import elfatt.ops.reference as reference
from elfatt.ops.kernels import global_linear_attention

HALF_ROUNDING = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@settings(deadline=None, max_examples=60)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    tokens=st.integers(1, 300),
    dim=st.integers(1, 17),
    log_scale=st.floats(-2, 4),
    dtype=st.sampled_from(list(HALF_ROUNDING)),
    seed=st.integers(0, 2**31 - 1),
)
def test_global_part_is_bounded_by_max_abs_v(batch, heads, tokens, dim, log_scale, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, tokens, heads, dim, generator=generator) * 10**log_scale for _ in range(3))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = global_linear_attention(q, k, v, "torch")  # [B, heads, N, d]
    assert torch.isfinite(out).all()
    bound = v.float().abs().amax(dim=(1, 3), keepdim=True).transpose(1, 2)
    assert (out.float().abs() <= bound * (1 + HALF_ROUNDING[dtype])).all()


@pytest.mark.parametrize("magnitude", [1.0, 1e2, 1e4], ids=["1", "1e2", "1e4"])
def test_global_part_float16_at_64k_tokens(magnitude):
    generator = torch.Generator().manual_seed(int(magnitude))
    shape = (1, 256 * 256, 2, 16)
    q, k, v = (torch.empty(shape).uniform_(-magnitude, magnitude, generator=generator).half() for _ in range(3))
    out = global_linear_attention(q, k, v, "torch")
    assert torch.isfinite(out).all()
    assert (out.float().abs() <= v.float().abs().amax() * (1 + HALF_ROUNDING[torch.float16])).all()
    expected = reference.global_linear_attention(*(x.transpose(1, 2) for x in (q, k, v)))
    assert_close(out, expected, torch.float16)


def test_full_elfatt_float16_at_64k_tokens_is_finite():
    generator = torch.Generator().manual_seed(7)
    shape = (1, 256 * 256, 4, 16)
    q, k, v = (torch.empty(shape).uniform_(-1e4, 1e4, generator=generator).half() for _ in range(3))
    out = elfatt.elfatt(q, k, v, (256, 256), block=8)
    assert torch.isfinite(out).all()
