"""``elfatt train``: image classification and Long Range Arena with any registered model or attention mechanism."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options; defaults come from :class:`elfatt_lab.train.loop.TrainConfig`."""
    from elfatt_lab._arguments import device, finite_float, fraction, int_at_least, output_folder
    from elfatt_lab.train.loop import TrainConfig
    from elfatt_lab.train.model import POOLS
    from elfatt_lab.train.tasks import TASKS

    defaults = TrainConfig()
    positive, non_negative = int_at_least(1), int_at_least(0)
    parser.add_argument("--task", default=defaults.task, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--model", default=defaults.model, help="an attention mechanism or a registered backbone")
    types = dict(
        epochs=positive,
        batch_size=positive,
        dim=positive,
        depth=positive,
        heads=positive,
        patch=positive,
        train_samples=positive,
        val_samples=positive,
        train_subset=non_negative,
        image_size=positive,
        max_length=positive,
        path_length=positive,
        block=non_negative,
        epoch_samples=non_negative,
        workers=non_negative,
        seed=non_negative,
        lr=finite_float(0.0, inclusive=False),
        weight_decay=finite_float(0.0),
        warmup_epochs=finite_float(0.0),
        label_smoothing=fraction,
    )
    for name, kind in types.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    parser.add_argument("--pool", choices=POOLS, default=defaults.pool, help="token pooling before the head")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CPU, fp16 with loss scaling on CUDA")
    parser.add_argument("--device", type=device, default=defaults.device, help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--out", type=output_folder, default=defaults.out, help="checkpoints, log.csv, curves.png")
    parser.add_argument("--resume", type=Path, help="a last.pt to continue from")
    parser.add_argument("--overwrite", action="store_true", help="replace the run --out holds (its checkpoints)")
    parser.add_argument("--data-dir", type=Path, help="fashion-mnist: the idx files (default: Debian's folder)")
    parser.add_argument(
        "--skip-unreadable-images",
        action="store_true",
        help="folder tasks: leave out images Pillow cannot read (each decoded once first) instead of stopping",
    )
    parser.add_argument(
        "--augment", action="store_true", help="folder: timm's crop, flip, jitter; fashion-mnist: padded crop, flip"
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Train per parsed ``args``; a bad option is one line on stderr and exit status 2, a run that cannot go on
    (a dead process of a distributed run, a non-finite loss) exit status 1."""
    from elfatt_lab._arguments import one_line
    from elfatt_lab.train.loop import TrainConfig, TrainingStopped, train

    options = {key: value for key, value in vars(args).items() if key in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**options, progress=not args.no_progress)
    try:
        train(config)
    except (ValueError, ImportError) as error:
        print(f"elfatt train: error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only --out: the file is named, what was saved stays whole
        print(f"elfatt train: error: {one_line(error)}", file=sys.stderr)
        return 1
    except TrainingStopped as error:
        print(f"elfatt train: error: {one_line(error)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m elfatt_lab.train``."""
    from elfatt_lab._arguments import OneLineErrorParser

    parser = OneLineErrorParser(prog="elfatt train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
