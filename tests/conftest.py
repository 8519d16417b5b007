"""Shared test helpers: NaN-filled fresh tensors, relative error, tolerances, seeded inputs."""

from __future__ import annotations

import os
import zlib

# Triton kernels run in Triton's interpreter on CPU tensors unless told otherwise (TRITON_INTERPRET=0 on a GPU).
# It must be set before anything imports Triton, torch included.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Relative error ||out - ref|| / ||ref|| against float64, as in STYLE.md.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; NaN anywhere gives inf so it can never pass.

    A reference that is zero but for rounding (the query gradient of a single token, say) has no meaningful
    relative error: its norm is floored at an RMS of 1e-3 per element (the references' values are of order 1),
    so float32's tolerance then admits noise of 1e-7, float32 rounding of values near 1.
    """
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    floor = 1e-3 * ref.numel() ** 0.5
    return ((out - ref).norm() / ref.norm().clamp_min(floor)).item()


WORST_ERROR: dict[tuple[torch.dtype, str], float] = {}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    error = rel_error(out, ref)
    kind = "output" if what == "output" else "gradient"
    WORST_ERROR[dtype, kind] = max(WORST_ERROR.get((dtype, kind), 0.0), error)
    assert error < TOLERANCE[dtype], f"{what}: relative error {error:.3e} >= {TOLERANCE[dtype]:.0e} ({dtype})"


def _nan_filled(factory):
    def fill(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.is_floating_point() or out.is_complex():
            out.fill_(float("nan"))
        return out

    return fill


@pytest.fixture(autouse=True)
def nan_fresh_tensors(monkeypatch):
    """Fresh uninitialised tensors are NaN, so an output that code forgets to write cannot pass."""
    monkeypatch.setattr(torch, "empty", _nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _nan_filled(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _nan_filled(torch.Tensor.new_empty))


@pytest.fixture
def generator(request) -> torch.Generator:
    """A generator seeded from the test's id: fresh, different inputs per case, reproducible per run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_terminal_summary(terminalreporter):
    """Print the worst relative error against the reference seen per dtype, outputs and gradients apart."""
    if not WORST_ERROR:
        return
    terminalreporter.section("worst relative error against the float64 reference")
    for (dtype, kind), error in sorted(WORST_ERROR.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        terminalreporter.write_line(f"{str(dtype):>16} {kind:<9} {error:.2e}  (tolerance {TOLERANCE[dtype]:.0e})")


@pytest.fixture(params=["eager", "export"], ids=["eager-form", "export-form"])
def block_form(request, monkeypatch) -> str:
    """The block ops in their eager form, or in the branch-free form they take while ``torch.export`` traces."""
    if request.param == "export":
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    return request.param
