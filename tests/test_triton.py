"""The Triton global-part kernels against the float64 reference: forward and gradients, under Triton's
interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1 unless told otherwise)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from cases import Case  # noqa: E402
from conftest import DTYPE_IDS, DTYPES, assert_close  # noqa: E402

import elfatt  # noqa: E402
import elfatt.ops.reference as reference  # noqa: E402
from elfatt.ops.backends import resolve_backend  # noqa: E402
from elfatt.ops.kernels import global_linear_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and os.environ["TRITON_INTERPRET"] != "1" else "cpu"
# Small shapes: the interpreter runs each program in NumPy. Odd and power-of-two head dims, token counts that
# are not multiples of the 64-token tile, a single token.
TRITON_CASES = [
    Case(1, 1, 1, 1, 3, 1),
    Case(2, 3, 5, 7, 5, 2),
    Case(1, 2, 9, 13, 16, 4),
    Case(3, 4, 11, 10, 8, 3),
    Case(1, 2, 16, 16, 32, 8),
    Case(2, 1, 3, 50, 12, 4),
]


def _on_device(tensors):
    return [x.detach().to(DEVICE).requires_grad_() for x in tensors]


def _global(q, k, v, backend):
    """The global part's kernel on head-major ``[B, heads, N, d]`` tensors, as the reference takes them."""
    return global_linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend)


def _qkv(case: Case, generator, dtype, scale: float = 1.0):
    """Head-major q, k, v of a case."""
    _, views = case.qkv(generator, dtype, scale=scale)
    return [x.transpose(1, 2) for x in views]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", TRITON_CASES, ids=[str(c) for c in TRITON_CASES])
def test_triton_global_part_matches_reference(case: Case, dtype, generator):
    q, k, v = _on_device(_qkv(case, generator, dtype, scale=3.0))
    out = _global(q, k, v, "triton")
    assert out.dtype == dtype and out.device.type == DEVICE
    q_ref, k_ref, v_ref = (x.detach().cpu().double().requires_grad_() for x in (q, k, v))
    ref = reference.global_linear_attention(q_ref, k_ref, v_ref)
    assert_close(out.cpu(), ref, dtype)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(dtype).to(DEVICE))
    ref.backward(grad)
    for name, x, x_ref in (("q", q, q_ref), ("k", k, k_ref), ("v", v, v_ref)):
        assert_close(x.grad.cpu(), x_ref.grad, dtype, f"gradient of {name}")


def test_triton_backend_in_the_module_matches_torch(generator):
    layer = elfatt.ELFATTAttention(48, 4, block=(3, 5), backend="triton").to(DEVICE)
    x = torch.randn(2, 7 * 9, 48, generator=generator).to(DEVICE)
    out = layer(x, (7, 9))
    layer.backend = "torch"
    assert_close(out.cpu(), layer(x, (7, 9)).cpu(), torch.float32)


def test_triton_handles_large_inputs_in_float16(generator):
    q, k, v = (torch.empty(1, 1, 300, 16).uniform_(-1e4, 1e4, generator=generator).half().to(DEVICE) for _ in range(3))
    out = _global(q, k, v, "triton")
    assert torch.isfinite(out).all()
    assert (out.float().abs() <= v.float().abs().amax() * (1 + 2e-3)).all()


def test_backend_choice():
    cpu = torch.randn(1)
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("auto", cpu) == ("triton" if cpu.is_cuda else "torch")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        resolve_backend("cuda", cpu)
    with pytest.raises(ValueError, match="unknown backend"):
        elfatt.ELFATTAttention(16, 2, backend="fast")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        resolve_backend("triton", torch.randn(1))


def test_triton_second_order_gradients_match_torch(generator):
    """The backward is differentiable: gradients of a gradient (``create_graph=True``) as the torch backend's."""
    q, k, v = _qkv(Case(2, 2, 5, 7, 6, 1), generator, torch.float32)
    grads = []
    for backend in ("triton", "torch"):
        inputs = _on_device([q, k, v])
        out = _global(*inputs, backend)
        first = torch.autograd.grad(out.square().sum(), inputs, create_graph=True)
        grads.append(torch.autograd.grad(sum(g.square().sum() for g in first), inputs))
    for name, got, expected in zip("qkv", *grads, strict=True):
        assert_close(got.cpu(), expected.cpu(), torch.float32, f"second-order gradient of {name}")


def test_float64_goes_to_torch():
    x = torch.randn(1, dtype=torch.float64, device=DEVICE)
    assert resolve_backend("auto", x) == "torch"
    with pytest.raises(ValueError, match="float64 inputs run with backend='torch'"):
        resolve_backend("triton", x)
