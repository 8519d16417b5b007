"""``elfatt train``: image classification and Long Range Arena with any registered model or attention mechanism."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options; defaults come from :class:`elfatt.train.loop.TrainConfig`."""
    from elfatt.train.loop import TrainConfig
    from elfatt.train.model import POOLS
    from elfatt.train.tasks import TASKS

    defaults = TrainConfig()
    parser.add_argument("--task", default=defaults.task, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--model", default=defaults.model, help="an attention mechanism or a registered backbone")
    for name in (
        "epochs",
        "batch_size",
        "dim",
        "depth",
        "heads",
        "patch",
        "train_samples",
        "val_samples",
        "image_size",
        "max_length",
        "path_length",
        "workers",
        "seed",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--pool", choices=POOLS, default=defaults.pool, help="token pooling before the head")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CPU, fp16 with loss scaling on CUDA")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--out", type=Path, default=defaults.out, help="checkpoints, log.csv and curves.png")
    parser.add_argument("--resume", type=Path, help="a last.pt to continue from")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Train per parsed ``args``; a bad option is one line on stderr and exit status 2."""
    from elfatt.train.loop import RunAborted, TrainConfig, train

    options = {key: value for key, value in vars(args).items() if key in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**options, progress=not args.no_progress)
    try:
        train(config)
    except (ValueError, ImportError) as error:
        print(f"elfatt train: error: {error}", file=sys.stderr)
        return 2
    except RunAborted as error:
        print(f"elfatt train: error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m elfatt.train``."""
    from elfatt._arguments import OneLineErrorParser

    parser = OneLineErrorParser(prog="elfatt train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
