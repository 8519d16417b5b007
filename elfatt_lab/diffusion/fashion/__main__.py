"""``python -m elfatt_lab.diffusion.fashion {classifier,train,evaluate}``: see :mod:`elfatt_lab.diffusion.fashion`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from elfatt_lab._arguments import finite_float, fraction, int_at_least, output_folder
from elfatt_lab.diffusion.fashion.evaluate import SETTINGS, EvaluationConfig, evaluate
from elfatt_lab.diffusion.fashion.model import GENERATORS
from elfatt_lab.diffusion.fashion.train import (
    JUDGE_DIR,
    ClassifierTrainConfig,
    DiffusionTrainConfig,
    train_classifier,
    train_diffusion,
)

positive = int_at_least(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.diffusion.fashion", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = DiffusionTrainConfig()
    train = commands.add_parser("train", help="train a class-conditional diffusion model")
    train.add_argument("--init-from", type=Path, help="start from this trained <generator>.safetensors")
    train.add_argument("--steps", type=positive, default=defaults.steps)
    train.add_argument("--batch-size", type=positive, default=defaults.batch_size)
    train.add_argument("--lr", type=finite_float(0.0, inclusive=False), default=defaults.lr)
    train.add_argument("--warmup-steps", type=int_at_least(0), default=defaults.warmup_steps)
    train.add_argument(
        "--decay-steps",
        type=int_at_least(0),
        default=defaults.decay_steps,
        help="the last this many steps take the learning rate to zero (half cosine); a resumed run may set it",
    )
    train.add_argument("--ema-decay", type=fraction, default=defaults.ema_decay)
    train.add_argument("--null-probability", type=fraction, default=defaults.null_probability)
    train.add_argument("--seed", type=int_at_least(0), default=defaults.seed)
    train.add_argument("--checkpoint-every", type=positive, default=defaults.checkpoint_every)
    train.add_argument(
        "--judge-every", type=int_at_least(0), default=0,
        help="every this many steps (a multiple of --checkpoint-every), the judge's class accuracy on samples",
    )  # fmt: skip
    train.add_argument("--judge-samples", type=int_at_least(1), default=defaults.judge_samples)
    train.add_argument(
        "--judge-guidance",
        type=finite_float(0.0),
        default=defaults.judge_guidance,
        help="classifier-free guidance of the judged samples (a resumed run may change it; each row records it)",
    )
    train.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    train.add_argument("--overwrite", action="store_true", help="replace the diffusion model --out holds")

    judge = commands.add_parser("classifier", help="train the classifier whose features judge the samples")
    judge_defaults = ClassifierTrainConfig()
    judge.add_argument("--epochs", type=positive, default=judge_defaults.epochs)
    judge.add_argument("--seed", type=int_at_least(0), default=judge_defaults.seed)

    score = commands.add_parser("evaluate", help="generate with every setting and score quality and speed")
    score_defaults = EvaluationConfig()
    score.add_argument("--model-dir", type=Path, help="<generator>.* (default: --out, else the generator's folder)")
    score.add_argument("--samples", type=int_at_least(2), default=score_defaults.samples)
    score.add_argument("--steps", type=positive, default=score_defaults.steps, help="DDIM steps")
    score.add_argument("--guidance", type=finite_float(0.0), default=score_defaults.guidance)
    score.add_argument("--batch-size", type=positive, default=score_defaults.batch_size)
    score.add_argument("--timing-rounds", type=positive, default=score_defaults.timing_rounds)
    score.add_argument(
        "--settings",
        nargs="+",
        choices=[setting.name for setting in SETTINGS],
        metavar="SETTING",
        help=f"of {', '.join(repr(setting.name) for setting in SETTINGS)} (default: every one the generator runs); "
        "'original' always runs first",
    )
    for command in (train, score):
        command.add_argument("--generator", choices=list(GENERATORS), default="unet")
        command.add_argument("--judge-dir", type=Path, default=JUDGE_DIR, help="classifier.* (default: %(default)s)")
        command.add_argument("--out", type=output_folder, help="default: results/diffusion-fashion-mnist-<generator>")
    judge.add_argument("--out", type=output_folder, default=JUDGE_DIR)
    for command in (train, judge, score):
        command.add_argument("--data-dir", type=Path, help="Fashion-MNIST's idx files (default: Debian's folder)")
        command.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    options = {key: value for key, value in vars(args).items() if key not in ("command", "no_progress")}
    options["progress"] = not args.no_progress and sys.stderr.isatty()
    try:
        if args.command == "train":
            config = DiffusionTrainConfig(**options)
            log = train_diffusion(config)
            last = log[-1]
            written = config.out / f"{config.generator}.*"
            print(f"trained to step {last['step']:.0f}, loss {last['loss']:.4f}; wrote {written}")
        elif args.command == "classifier":
            result = train_classifier(ClassifierTrainConfig(**options))
            print(f"classifier test accuracy {result['test_accuracy']:.4f}; wrote {args.out}/classifier.*")
        else:
            config = EvaluationConfig(**options)
            rows = evaluate(config)
            print((config.out / "quality.md").read_text())
            print(f"{len(rows) - 1} settings; wrote {config.out}/quality.csv, quality.md, samples.png")
    except ValueError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    except OSError as error:  # a full disk, a read-only --out: the file is named, what was saved stays whole
        parser.exit(1, f"{parser.prog} {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
