"""``elfatt export``: a registered model's ONNX file (dynamic sizes), checked in onnxruntime
(:func:`elfatt.export.export_onnx`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elfatt.export import export_onnx

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``elfatt export``."""
    from elfatt_lab._arguments import int_at_least, output_file

    parser.add_argument("model", help="a registered model, e.g. cswin_elfatt_tiny_224 (any timm model works)")
    parser.add_argument("--out", type=output_file, default=None, help="the .onnx file (default: <model>.onnx)")
    parser.add_argument(
        "--size", type=int_at_least(1), nargs="+", default=[224], metavar="SIDE", help="H [W] of the example"
    )
    parser.add_argument("--batch-size", type=int_at_least(1), default=1)
    parser.add_argument("--num-classes", type=int_at_least(0), default=None)
    parser.add_argument("--static", action="store_true", help="fix batch, height and width to the example's")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")


# Floats a backbone keeps per input pixel while traced and checked: its stages' activations, generously counted.
FLOATS_PER_PIXEL = 256


def _check_fits(size: list[int], batch: int) -> None:
    """Refuse, before any model is built, an example whose activations alone exceed the free memory."""
    from elfatt_lab._memory import available_mib

    height, width = (size[0], size[-1])
    need = batch * height * width * FLOATS_PER_PIXEL * 4 / 2**30
    free = available_mib()
    if free is not None and need > free / 1024:
        raise ValueError(
            f"--size {height}x{width}: tracing it needs ~{need:.0f} GiB for activations, {free / 1024:.1f} GiB are "
            "free; choose a smaller size (the exported file takes other sizes too)"
        )


def run(args: argparse.Namespace) -> int:
    """Run ``elfatt export``; returns the exit status (2, with one line on stderr, for input it cannot use)."""
    kwargs = {} if args.num_classes is None else dict(num_classes=args.num_classes)
    out = args.out or Path(f"{args.model}.onnx")
    try:
        if len(args.size) > 2:
            raise ValueError(f"--size takes H or H W, got {args.size}")
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give the .onnx file's path")
        _check_fits(args.size, args.batch_size)
        result = export_onnx(
            args.model,
            out,
            image_size=tuple(args.size) if len(args.size) == 2 else args.size[0],
            batch_size=args.batch_size,
            dynamic=not args.static,
            check=not args.no_check,
            **kwargs,
        )
    except (ValueError, ImportError, OSError) as error:
        print(f"elfatt export: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        print(f"elfatt export: error: {error}", file=sys.stderr)
        return 2
    shape = "static shapes" if args.static else "dynamic batch, height and width"
    print(f"wrote {result['path']} ({shape}) in {result['seconds']:.1f} s")
    for (batch, height, width), error in result["checked"].items():
        print(f"  onnxruntime, batch {batch} at {height}x{width}: relative error {error:.1e} against PyTorch")
    return 0
