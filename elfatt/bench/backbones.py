"""Backbones side by side: parameters, GMACs at 224, and forward latency per resolution, with ratios to timm's Swin-T.

``python -m elfatt.bench.backbones`` builds each registered ELFATT variant (random weights) and, when timm imports,
timm's own models (``timm:<name>``, built as :func:`~elfatt.bench.backbone_models.build_backbone` says: Swin with
``resolution // 64`` windows above 224). At each resolution every model is built first, then timed in interleaved
rounds (each round one forward of every model, in turn), so that a noisy machine slows them alike; the figures are
medians over rounds. ``speedup_<r>`` is the reference model's latency (``--reference``, timm's Swin-T by default)
over the model's, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from elfatt._csv import write_rows
from elfatt._progress import progress_bar
from elfatt.bench.backbone_models import TIMM_PREFIX, build_backbone, check_backbones, timm_imports
from elfatt.bench.measure import count_flops, time_round_robin

__all__ = ["main", "DEFAULT_MODELS"]

DEFAULT_MODELS = (
    "cswin_elfatt_tiny_224",
    "swin_elfatt_tiny_224",
    "swin_elfatt_tiny_hr",
    "cswin_elfatt_base_224",
    "swin_elfatt_base_224",
)
DEFAULT_TIMM_MODELS = ("swin_tiny_patch4_window7_224", "vit_small_patch16_224")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m elfatt.bench.backbones", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered ELFATT variants")
    parser.add_argument("--timm-models", nargs="*", default=list(DEFAULT_TIMM_MODELS), help="timm's own models")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds per resolution (default 3)")
    parser.add_argument(
        "--reference", default=TIMM_PREFIX + DEFAULT_TIMM_MODELS[0], help="the model speed-ups are measured against"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/backbones.csv"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.resolutions) < 32:
        parser.error("--repeats must be >= 1 and every resolution >= 32")
    if args.timm_models and not timm_imports():
        print("timm does not import here: its models are left out", file=sys.stderr)
        args.timm_models = []
    args.names = [*args.models, *(TIMM_PREFIX + name for name in args.timm_models)]
    try:
        check_backbones(tuple(args.names))
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the table and write the CSV."""
    args = _parse(argv)
    rows = {}
    for name in args.names:
        torch.manual_seed(0)
        model = build_backbone(name, 224).eval()
        macs = count_flops(model, (torch.randn(1, 3, 224, 224),), backward=False)
        rows[name] = dict(model=name, params_m=sum(p.numel() for p in model.parameters()) / 1e6)
        rows[name]["gmacs_224"] = None if macs is None else macs / 2e9
    with progress_bar(not args.no_progress, transient=True) as progress:
        task = None if progress is None else progress.add_task("backbones", total=len(args.resolutions) * args.repeats)
        advance = None if progress is None else lambda: progress.advance(task)
        for resolution in args.resolutions:
            torch.manual_seed(0)
            models = {name: build_backbone(name, resolution).eval() for name in args.names}
            image = torch.randn(1, 3, resolution, resolution)
            calls = {name: functools.partial(model, image) for name, model in models.items()}
            with torch.inference_mode():
                medians = time_round_robin(calls, torch.device("cpu"), args.repeats, advance)
            for name, median in medians.items():
                rows[name][f"fwd_ms_{resolution}"] = median
                if args.reference in medians:
                    rows[name][f"speedup_{resolution}"] = medians[args.reference] / median
            del models
    print(f"{'model':<36} {'params M':>9} {'GMACs@224':>10}" + "".join(f" {f'{r}px ms':>15}" for r in args.resolutions))
    for row in rows.values():
        gmacs = "-" if row["gmacs_224"] is None else f"{row['gmacs_224']:.2f}"
        cells = []
        for resolution in args.resolutions:
            speedup = row.get(f"speedup_{resolution}")
            cells.append(f"{row[f'fwd_ms_{resolution}']:.1f}" + ("" if speedup is None else f" ({speedup:.2f}x)"))
        print(f"{row['model']:<36} {row['params_m']:>9.2f} {gmacs:>10}" + "".join(f" {c:>15}" for c in cells))
    if any(f"speedup_{r}" in row for row in rows.values() for r in args.resolutions):
        print(f"(x): {args.reference}'s latency / the model's, in the same rounds")
    write_rows(list(rows.values()), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
