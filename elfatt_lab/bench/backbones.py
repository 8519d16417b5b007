"""Backbones side by side: parameters, GMACs at 224, and forward latency per resolution, with ratios to timm's Swin-T.

``python -m elfatt_lab.bench.backbones`` builds each registered ELFATT variant (random weights) and, when timm imports,
timm's own models (``timm:<name>``, built as :func:`~elfatt_lab.bench.backbone_models.build_backbone` says: Swin with
``resolution // 64`` windows above 224). At each resolution every model is built first, then timed in interleaved
rounds (each round one forward of every model, in turn), so that a noisy machine slows them alike; the figures are
medians over rounds. ``speedup_<r>`` is the reference model's latency (``--reference``, timm's Swin-T by default)
over the model's, measured in the same rounds. ``--out`` names a folder for ``backbones.csv`` and ``backbones.md``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from elfatt_lab._arguments import output_folder
from elfatt_lab._csv import publish_table
from elfatt_lab._progress import progress_bar
from elfatt_lab.bench.backbone_models import TIMM_PREFIX, build_backbone, check_backbones, timm_imports
from elfatt_lab.bench.measure import count_flops, time_round_robin

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
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.bench.backbones", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered ELFATT variants")
    parser.add_argument("--timm-models", nargs="*", default=list(DEFAULT_TIMM_MODELS), help="timm's own models")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds per resolution (default 3)")
    parser.add_argument(
        "--reference", default=TIMM_PREFIX + DEFAULT_TIMM_MODELS[0], help="the model speed-ups are measured against"
    )
    parser.add_argument(
        "--out", type=output_folder, default=Path("bench-results"), help="folder for backbones.csv and backbones.md"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.resolutions) < 32:
        parser.error("--repeats must be >= 1 and every resolution >= 32")
    if args.out.suffix == ".csv":
        parser.error(f"--out is a folder (backbones.csv and backbones.md go under it), not a CSV file: {args.out}")
    if args.timm_models and not timm_imports():
        print("timm does not import here: its models are left out", file=sys.stderr)
        args.timm_models = []
    args.names = [*args.models, *(TIMM_PREFIX + name for name in args.timm_models)]
    try:
        check_backbones(tuple(args.names))
    except ValueError as error:
        parser.error(str(error))
    return args


def _table(rows: list[dict], resolutions: Sequence[int]) -> str:
    lines = ["| model | params M | GMACs@224 | " + " | ".join(f"{r} px ms" for r in resolutions) + " |"]
    lines.append("|---" * (3 + len(resolutions)) + "|")
    for row in rows:
        gmacs = "-" if row["gmacs_224"] is None else f"{row['gmacs_224']:.2f}"
        cells = []
        for resolution in resolutions:
            speedup = row.get(f"speedup_{resolution}")
            cells.append(f"{row[f'fwd_ms_{resolution}']:.1f}" + ("" if speedup is None else f" ({speedup:.2f}x)"))
        lines.append(f"| {row['model']} | {row['params_m']:.2f} | {gmacs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the table and write it under ``--out``."""
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
    caption = (
        f"Backbones, random weights, batch 1, fp32 forward, {torch.get_num_threads()} threads, medians of "
        f"{args.repeats} interleaved rounds"
    )
    if any(f"speedup_{r}" in row for row in rows.values() for r in args.resolutions):
        caption += f"; (x): {args.reference}'s latency / the model's, in the same rounds"
    table_rows = list(rows.values())
    publish_table(table_rows, caption, _table(table_rows, args.resolutions), args.out, "backbones")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
