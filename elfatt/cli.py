"""The ``elfatt`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``elfatt``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="elfatt", description="ELFATT: Efficient Linear Fast Attention")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="time an ELFATT layer against SDPA global attention")
    demo.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64, 96], help="grid sides to run")
    demo.add_argument("--repeats", type=int, default=5, help="timed repeats per size (median is shown)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from elfatt.demo import run_demo

        if min(args.sides) < 1 or args.repeats < 1:
            parser.error("--sides and --repeats must be >= 1")
        run_demo(args.sides, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
