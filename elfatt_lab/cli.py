"""The ``elfatt`` command: one subcommand per job, each imported only when it runs."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from elfatt_lab._arguments import OneLineErrorParser

__all__ = ["COMMANDS", "main"]

# name: (the module with add_arguments(parser) and run(args) -> int, the help line).
COMMANDS = {
    "bench": ("elfatt_lab.bench.cli", "speed, memory and FLOPs against every peer, side by side"),
    "train": ("elfatt_lab.train.cli", "train a classifier (image folders, digits, Long Range Arena)"),
    "export": ("elfatt_lab.export_cli", "write a model's ONNX file (dynamic sizes), checked in onnxruntime"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``elfatt``; returns the exit status."""
    parser = OneLineErrorParser(prog="elfatt", description="ELFATT: Efficient Linear Fast Attention")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    modules = {}
    for name, (module_name, help_line) in COMMANDS.items():
        modules[name] = importlib.import_module(module_name)
        modules[name].add_arguments(commands.add_parser(name, help=help_line))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
