"""ONNX export of a registered backbone (the path to TensorRT and edge GPUs), checked in onnxruntime.

``export_onnx("cswin_elfatt_tiny_224", "model.onnx")`` traces the model with ``torch.onnx.export(dynamo=True)``,
by default with dynamic batch, height and width (for a ViT any multiple of its patch, for a hierarchical backbone
any side from :func:`min_side` up), then runs the file in onnxruntime at the export size and at a second size
whose stage maps do not divide by the blocks, and raises if either differs from eager PyTorch by more than
``tolerance`` (relative). It needs the ``export`` extra (onnx, onnxscript, onnxruntime).

The trace goes through ``torch.export.export`` first: given the model itself, ``torch.onnx.export`` can fall back
to a trace that bakes the example's size in while still declaring dynamic inputs.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["export_onnx", "check_onnx", "min_side"]


def _require(module: str) -> Any:
    """Import one of the ``export`` extra's packages, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"ONNX export needs {module}: pip install 'elfatt[export]'") from error


def _patch_size(model: nn.Module) -> int:
    """The patch side that input sides must be multiples of (a ViT's), or 1."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return 1
    return int(patch) if isinstance(patch, int) else int(patch[0])


def min_side(model: nn.Module) -> int:
    """The smallest input side a dynamic export accepts: one patch for a ViT; for a hierarchical backbone,
    ``3 x`` its last stage's reduction, so every stage's grid has at least 3 rows and columns (PyTorch's tracer
    specialises sizes of 1, so a file that also held them would need another graph)."""
    patch = _patch_size(model)
    if patch > 1:
        return patch
    info = getattr(model, "feature_info", None)
    reduction = info[-1]["reduction"] if info else 32
    return 3 * int(reduction)


def _dynamic_shapes(model: nn.Module) -> tuple[dict[int, Any], ...]:
    """Batch, height and width dynamic: sides that are multiples of a ViT's patch, or any from :func:`min_side`."""
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=4096)
    patch = _patch_size(model)
    if patch > 1:
        return ({0: batch, 2: patch * dim("rows", min=1, max=1024), 3: patch * dim("cols", min=1, max=1024)},)
    low = min_side(model)
    return ({0: batch, 2: dim("height", min=low, max=16384), 3: dim("width", min=low, max=16384)},)


def _second_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """Another input size to check a dynamic file at: other sides, not multiples of the export size's blocks."""
    patch = _patch_size(model)
    if patch > 1:
        return size[0] + 3 * patch, max(patch, size[1] - 2 * patch)
    return size[0] + 37, max(min_side(model), size[1] - 29)


def check_onnx(path: str | Path, model: nn.Module, images: Tensor, tolerance: float = 1e-4) -> float:
    """Run the ONNX file at ``path`` in onnxruntime on ``images`` and return its relative error against ``model``.

    Raises:
        ImportError: without onnxruntime (the ``export`` extra).
        AssertionError: where the relative error is ``tolerance`` or more.
    """
    onnxruntime = _require("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = model(images).double()
    error = ((torch.from_numpy(output).double() - expected).norm() / expected.norm()).item()
    if not error < tolerance:
        raise AssertionError(
            f"onnxruntime's output at {tuple(images.shape)} differs from PyTorch's by {error:.2e} (relative), "
            f"over {tolerance:.0e}"
        )
    return error


def export_onnx(
    model: nn.Module | str,
    path: str | Path,
    *,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 1,
    dynamic: bool = True,
    check: bool = True,
    tolerance: float = 1e-4,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Write the ONNX file of ``model`` (a module, or a registered name built with ``model_kwargs``).

    Args:
        model: the model, or a name for ``timm.create_model``.
        path: the ``.onnx`` file to write.
        image_size: the example input's side, or ``(H, W)``.
        batch_size: the example input's batch (at least 2 when dynamic).
        dynamic: dynamic batch, height and width; False fixes them to the example input's.
        check: run the file in onnxruntime at the export size and, when dynamic, at a second size.
        tolerance: the relative error the check allows.
        **model_kwargs: constructor arguments when ``model`` is a name.

    Returns:
        ``path``, the sizes checked with their relative errors, and the export time in seconds.
    """
    _require("onnxscript")
    if check:
        _require("onnxruntime")
    if isinstance(model, str):
        import timm

        import elfatt.models  # noqa: F401  (registers the ELFATT variants with timm)

        model = timm.create_model(model, **model_kwargs)
    elif model_kwargs:
        raise ValueError(f"model_kwargs {sorted(model_kwargs)} need a model name, not a module")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if batch_size < 1 or height < 1 or width < 1:
        raise ValueError(f"batch_size and image_size must be positive, got {batch_size} and {(height, width)}")
    patch, low = _patch_size(model), min_side(model)
    if dynamic and (height % patch or width % patch or min(height, width) < low):
        raise ValueError(
            f"a dynamic export needs sides of at least {low} pixels{f', multiples of {patch}' if patch > 1 else ''}; "
            f"got {height}x{width}"
        )
    model = model.eval()
    in_chans = getattr(model, "in_chans", 3)
    generator = torch.Generator().manual_seed(0)
    # torch.export specialises sizes of 1, so a dynamic batch is traced with at least two images.
    example_batch = max(batch_size, 2) if dynamic else batch_size
    images = torch.randn(example_batch, in_chans, height, width, generator=generator)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.no_grad():
        # torch.export with named dims raises where the model would specialise a dynamic size; torch.onnx.export
        # given the model itself may instead bake the example's size in and still claim dynamic inputs.
        program = torch.export.export(model, (images,), dynamic_shapes=_dynamic_shapes(model) if dynamic else None)
        torch.onnx.export(program, (images,), str(path), dynamo=True, input_names=["images"], output_names=["output"])
    result: dict[str, Any] = dict(path=path, seconds=time.perf_counter() - start, checked={})
    if check:
        sizes = [(height, width)] + ([_second_size(model, (height, width))] if dynamic else [])
        for size in sizes:
            batch = example_batch + 1 if dynamic and size != (height, width) else example_batch
            sample = torch.randn(batch, in_chans, *size, generator=generator)
            result["checked"][(batch, *size)] = check_onnx(path, model, sample, tolerance)
    return result
