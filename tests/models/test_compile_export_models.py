"""The backbones under torch.compile (fullgraph, dynamic sizes), and their ONNX files (``elfatt export``).

Reduced configs (one block per stage, narrow) keep the structure that tracing meets (four stages, conv merging,
stripes and windows, counted blocks, split heads, prefix tokens) at a fraction of the trace time. Compile runs
Dynamo's graph itself (backend ``eager``); the layer's own tests add AOTAutograd and Inductor. ONNX export of a
backbone takes a minute here, so CI exports the CSWin family (the most varied block layout) and the others run
with ``ELFATT_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import rel_error
from torch._dynamo.testing import CompileCounterWithBackend

import elfatt.models as models
from elfatt.export import check_onnx, export_onnx, min_side
from elfatt_lab.cli import main

SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), num_classes=5)
SMALL_VIT = dict(embed_dim=24, depth=1, num_heads=3, num_classes=5)
FAMILIES = {
    "cswin_elfatt_tiny_224": SMALL,
    "swin_elfatt_tiny_224": SMALL,
    "vit_elfatt_tiny_patch16_224": SMALL_VIT,
}
# Three sizes in a row whose stage grids the blocks do not divide; ViT sides are multiples of its 16-pixel patch,
# hierarchical sides at least elfatt.export.min_side (96).
SIZES = {"hierarchical": [(96, 128), (131, 100), (112, 150)], "vit": [(64, 96), (80, 48), (112, 64)]}
SLOW = os.environ.get("ELFATT_SLOW_TESTS") == "1"


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model(name, **FAMILIES[name]).eval()


def _sizes(name: str) -> list[tuple[int, int]]:
    return SIZES["vit" if name.startswith("vit") else "hierarchical"]


# Swin's tracing is CSWin's with windows for stripes; its bf16 autocast graph runs with ELFATT_SLOW_TESTS=1 (CI time).
AUTOCAST_STATES = {name: (torch.float32, torch.bfloat16) for name in FAMILIES}
AUTOCAST_STATES["swin_elfatt_tiny_224"] = (torch.float32, torch.bfloat16) if SLOW else (torch.float32,)
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_compiled_backbone_matches_eager_at_three_sizes(name, generator):
    """fp32 then bf16 autocast, three sizes each: one graph per autocast state, never one per size."""
    torch._dynamo.reset()
    model = _model(name)
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    for dtype in AUTOCAST_STATES[name]:
        tolerance = TOLERANCES[dtype]
        for size in _sizes(name):
            x = torch.randn(2, 3, *size, generator=generator)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                expected, got = model(x), compiled(x)
            assert got.dtype == expected.dtype
            assert rel_error(got, expected) < tolerance, f"{dtype} {size}: {rel_error(got, expected):.2e}"
    states = len(AUTOCAST_STATES[name])
    assert counter.frame_count == states, f"expected a graph per autocast state, Dynamo compiled {counter.frame_count}"


ONNX_FAMILIES = [
    pytest.param(name, marks=[] if SLOW or name.startswith("cswin") else pytest.mark.skip("ELFATT_SLOW_TESTS=1"))
    for name in FAMILIES
]


@pytest.mark.parametrize("name", ONNX_FAMILIES)
def test_onnx_export_with_dynamic_sizes_runs_in_onnxruntime(name, tmp_path, generator):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _model(name)
    first, _, third = _sizes(name)
    result = export_onnx(model, tmp_path / f"{name}.onnx", image_size=first)
    # export_onnx checked the example size and a second one; one more size and batch here.
    assert len(result["checked"]) == 2 and all(error < 1e-4 for error in result["checked"].values())
    assert check_onnx(result["path"], model, torch.randn(3, 3, *third, generator=generator)) < 1e-4


@pytest.mark.skipif(not SLOW, reason="ELFATT_SLOW_TESTS=1: 3 to 11 minutes per model on 2 cores")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_full_size_tiny_variants_export_with_dynamic_sizes(name, tmp_path):
    """The T variants themselves, as ``elfatt export`` writes them: checked at the example size and a second."""
    pytest.importorskip("onnxruntime")
    result = export_onnx(name, tmp_path / f"{name}.onnx", image_size=(64, 96) if name.startswith("vit") else (128, 96))
    assert len(result["checked"]) == 2 and all(error < 1e-4 for error in result["checked"].values())


def test_export_checks_its_inputs(tmp_path):
    model = _model("cswin_elfatt_tiny_224")
    with pytest.raises(ValueError, match="need a model name"):
        export_onnx(model, tmp_path / "x.onnx", num_classes=3)
    with pytest.raises(ValueError, match=f"at least {min_side(model)} pixels"):
        export_onnx(model, tmp_path / "x.onnx", image_size=64)
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(_model("vit_elfatt_tiny_patch16_224"), tmp_path / "x.onnx", image_size=(64, 70))


def test_export_command_errors_are_one_line(tmp_path, capsys):
    """What is refused while parsing (an --out that is a folder, ...) is in tests/test_command_inputs.py."""
    assert main(["export", "no_such_model", "--out", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", "cswin_elfatt_tiny_224", "--size", "64", "--out", str(tmp_path / "x.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("elfatt export: error: ") for line in lines), lines
    assert "Unknown model" in lines[0] and "at least 96 pixels" in lines[1]
