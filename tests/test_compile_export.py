"""ELFATTAttention under torch.compile (fullgraph, dynamic sizes), torch.export and ONNX, against eager.

Traced code takes the branch-free form of the block ops (gathered blocks, masked keys; its float64 checks are the
``export-form`` cases of test_functional.py), so one graph serves every grid size. The layout and dtype matrix
runs Dynamo's graph itself (backend ``eager``: fullgraph, dynamic shapes); the gradient test adds AOTAutograd
(``aot_eager``); one test runs Inductor, whose C++ code generation takes tens of seconds per graph here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import rel_error
from torch._dynamo.testing import CompileCounterWithBackend

from elfatt import BlockCount, ELFATTAttention

LAYOUTS = {"window4": dict(block=4), "count2x3": dict(block=BlockCount(2, 3)), "stripe2": dict(block=(2, None))}
# Three grids in a row, none a multiple of the previous one's blocks, never H == W (Dynamo would give both one
# symbol and compile again).
SIZES = [(10, 13), (12, 9), (7, 16)]


class GridAttention(torch.nn.Module):
    """The layer on an image-shaped input ``[B, C, H, W]``, so that an exported grid size comes from the input."""

    def __init__(self, **layout) -> None:
        super().__init__()
        self.attn = ELFATTAttention(32, num_heads=4, **layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return self.attn(x.flatten(2).transpose(1, 2), (height, width))


def _layer(layout: str) -> ELFATTAttention:
    torch.manual_seed(0)
    return ELFATTAttention(32, num_heads=4, **LAYOUTS[layout]).eval()


def _compile_and_compare(layer, backend: str, dtype: torch.dtype, generator) -> None:
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    compiled_after_first = None
    for size in SIZES:
        x = torch.randn(2, size[0] * size[1], 32, generator=generator)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            expected, got = layer(x, size), compiled(x, size)
        assert got.dtype == expected.dtype
        assert rel_error(got, expected) < tolerance, f"{size}: {rel_error(got, expected):.2e}"
        compiled_after_first = compiled_after_first or counter.frame_count
    assert counter.frame_count == compiled_after_first, f"{SIZES[1:]} compiled again: the graph is not dynamic"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compiled_layer_matches_eager_at_three_sizes(layout, dtype, generator):
    _compile_and_compare(_layer(layout), "eager", dtype, generator)


def test_inductor_compiled_layer_matches_eager_at_three_sizes(generator):
    _compile_and_compare(_layer("window4"), "inductor", torch.float32, generator)


def test_compiled_layer_gradients_match_eager(generator):
    torch._dynamo.reset()
    layer = _layer("count2x3").train()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    for size in SIZES[:2]:
        x = torch.randn(2, size[0] * size[1], 32, generator=generator, requires_grad=True)
        grads = []
        for module in (layer, compiled):
            layer.zero_grad()
            x.grad = None
            module(x, size).square().mean().backward()
            grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
        for eager, traced in zip(*grads, strict=True):
            assert rel_error(traced, eager) < 1e-4


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_export_and_onnx_with_dynamic_sizes(layout, tmp_path, generator):
    """One exported program and one ONNX file, right at grids the example's blocks do not divide.

    Sides start at 4: PyTorch's tracer specialises sizes of 1, so a side whose blocks could be one token wide (W=3
    in 3 counted blocks) would need a graph of its own; export says so and suggests the bound.
    """
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = GridAttention(**LAYOUTS[layout]).eval()
    dim = torch.export.Dim
    dynamic = ({0: dim("batch", max=64), 2: dim("height", min=4, max=512), 3: dim("width", min=4, max=512)},)
    example = torch.randn(2, 32, 12, 9, generator=generator)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        path = tmp_path / f"{layout}.onnx"
        # the model itself, as users call it: a fallback to a trace of the example's sizes would fail below
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=dynamic)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, size in [(3, (13, 22)), (1, (20, 20)), (2, (5, 7))]:
        x = torch.randn(batch, 32, *size, generator=generator)
        with torch.no_grad():
            expected = model(x)
            assert rel_error(program.module()(x), expected) < 1e-5, f"exported program at {size}"
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert rel_error(torch.from_numpy(got), expected) < 1e-4, f"onnxruntime at {size}"
