"""Backbones side by side: parameters, GMACs at 224, and forward latency per resolution.

``python -m elfatt.bench.backbones`` builds each registered ELFATT variant (random weights) and, when timm
imports, timm's own models for reference, and times one forward per resolution in the same run. timm's Swin needs
windows that divide every stage at 512, so it is built there with ``window_size = resolution // 64`` (8).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from elfatt._csv import write_rows
from elfatt.bench.measure import count_flops, time_call
from elfatt.models import create_model

__all__ = ["main"]

DEFAULT_MODELS = ("cswin_elfatt_tiny_224", "swin_elfatt_tiny_224", "cswin_elfatt_base_224", "swin_elfatt_base_224")
DEFAULT_TIMM_MODELS = ("swin_tiny_patch4_window7_224",)


def _timm_model(name: str, resolution: int) -> nn.Module:
    import timm

    kwargs: dict = {}
    if resolution != 224:
        kwargs["img_size"] = resolution
        if name.startswith("swin"):
            kwargs["window_size"] = resolution // 64
    return timm.create_model(name, **kwargs)


def _timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:  # a timm whose torchvision does not load raises RuntimeError, not ImportError
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elfatt.bench.backbones", description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--timm-models", nargs="*", default=list(DEFAULT_TIMM_MODELS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/backbones.csv"))
    args = parser.parse_args(argv)
    entries = [("elfatt", name) for name in args.models]
    if args.timm_models and _timm_available():
        entries += [("timm", name) for name in args.timm_models]
    elif args.timm_models:
        print("timm does not import here: its models are left out", file=sys.stderr)
    device = torch.device("cpu")
    rows = []
    print(f"{'model':<32} {'params M':>9} {'GMACs@224':>10}" + "".join(f" {f'{r}px ms':>10}" for r in args.resolutions))
    for source, name in entries:
        torch.manual_seed(0)
        model = (create_model(name) if source == "elfatt" else _timm_model(name, 224)).eval()
        image = torch.randn(1, 3, 224, 224)
        macs = count_flops(model, (image,), backward=False)
        row = dict(source=source, model=name, params_m=sum(p.numel() for p in model.parameters()) / 1e6)
        row["gmacs_224"] = None if macs is None else macs / 2e9
        for resolution in args.resolutions:
            if source == "timm" and resolution != 224:
                model = _timm_model(name, resolution).eval()
            image = torch.randn(1, 3, resolution, resolution)
            with torch.inference_mode():
                timing = time_call(lambda: model(image), device, warmup=1, repeats=args.repeats)  # noqa: B023
            row[f"fwd_ms_{resolution}"] = timing.median_ms
        rows.append(row)
        gmacs = "-" if row["gmacs_224"] is None else f"{row['gmacs_224']:.2f}"
        times = "".join(f" {row[f'fwd_ms_{r}']:>10.1f}" for r in args.resolutions)
        print(f"{source + ':' + name:<32} {row['params_m']:>9.2f} {gmacs:>10}{times}", flush=True)
    write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
