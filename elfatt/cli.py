"""The ``elfatt`` command."""

from __future__ import annotations

from collections.abc import Sequence

from elfatt.bench.cli import OneLineErrorParser, add_arguments, run
from elfatt.export import add_arguments as add_export_arguments
from elfatt.export import run as run_export
from elfatt.train.cli import add_arguments as add_train_arguments
from elfatt.train.cli import run as run_train

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``elfatt``; returns the exit status."""
    parser = OneLineErrorParser(prog="elfatt", description="ELFATT: Efficient Linear Fast Attention")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    bench = commands.add_parser("bench", help="speed, memory and FLOPs against every peer, side by side")
    add_arguments(bench)
    train = commands.add_parser("train", help="train a classifier (image folders, digits, Long Range Arena)")
    add_train_arguments(train)
    export = commands.add_parser("export", help="write a model's ONNX file (dynamic sizes), checked in onnxruntime")
    add_export_arguments(export)
    args = parser.parse_args(argv)
    if args.command == "export":
        return run_export(args)
    return run_train(args) if args.command == "train" else run(args)


if __name__ == "__main__":
    raise SystemExit(main())
