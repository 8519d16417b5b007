"""The GPU evidence pack: every check that needs a CUDA GPU, in one command sized for a short loan of one.

``python -m elfatt_lab.bench.gpu --out results/gpu-<device>`` runs, one after the other and each under its own time
limit: the CUDA tests (Triton kernels against the float64 reference, without Triton's interpreter; SDPA's Flash
path), the global-part kernels (Triton against PyTorch, forward and backward, and the memory floor), and the
benchmark in bf16 without and with ``torch.compile`` (op level up to 256x256 tokens, model level up to 1024 px).
Each step's output goes to ``<out>/<step>.log``; ``<out>/pack.json`` and ``<out>/summary.md`` say what ran, how
long, and how it ended. ``--dry-run`` prints and writes the plan without running it, on any machine.
How to run it on a borrowed GPU machine: ``docs/lab-notes.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from elfatt_lab._atomic import atomic_write_text

__all__ = ["Step", "plan", "main"]


@dataclass(frozen=True)
class Step:
    """One command of the pack: its name, argv, time limit and extra environment."""

    name: str
    argv: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)


def plan(out: Path, python: str = sys.executable) -> list[Step]:
    """The pack's steps, writing under ``out``, each with its own time limit."""
    bench = [python, "-m", "elfatt_lab.bench", "--device", "cuda", "--dtype", "bf16", "--cell-budget", "10"]
    return [
        Step(
            "cuda-tests",
            [python, "-m", "pytest", "-q", "tests/test_triton.py", "tests/ops/", "-p", "no:cacheprovider"],
            120,
            {"TRITON_INTERPRET": "0"},
        ),
        Step("kernels", [python, "-m", "elfatt_lab.bench.kernels", "--out", str(out / "kernels.csv")], 90),
        Step("bench-bf16", [*bench, "--out", str(out / "bench-bf16")], 150),
        Step("bench-bf16-compile", [*bench, "--compile", "--out", str(out / "bench-bf16-compile")], 180),
    ]


def _run(step: Step, out: Path) -> dict:
    log = out / f"{step.name}.log"
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            returncode = subprocess.run(
                step.argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=step.timeout_s,
                env={**os.environ, **step.env},
            ).returncode
            ended = "passed" if returncode == 0 else f"failed (exit {returncode})"
        except subprocess.TimeoutExpired:
            returncode, ended = None, f"stopped at its {step.timeout_s} s limit"
    return dict(step=step.name, ended=ended, returncode=returncode, seconds=time.perf_counter() - start, log=log.name)


def _machine() -> dict:
    import torch

    return dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=sys.version.split()[0],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.bench.gpu", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="e.g. results/gpu-h200")
    parser.add_argument("--dry-run", action="store_true", help="print and write the plan; run nothing")
    parser.add_argument("--steps", nargs="+", help="run only these steps (default: all)")
    args = parser.parse_args(argv)
    steps = plan(args.out)
    if args.steps:
        unknown = sorted(set(args.steps) - {step.name for step in steps})
        if unknown:
            parser.error(f"unknown step {unknown[0]!r}; the steps are {', '.join(step.name for step in steps)}")
        steps = [step for step in steps if step.name in args.steps]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        atomic_write_text(json.dumps([asdict(step) for step in steps], indent=2) + "\n", args.out / "plan.json")
        for step in steps:
            print(f"{step.name} (limit {step.timeout_s} s): {' '.join(step.argv)}")
        print(f"at most {sum(step.timeout_s for step in steps)} s; wrote {args.out / 'plan.json'}")
        return 0
    import torch

    if not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: needs a CUDA GPU (--dry-run shows the plan)\n")
    machine = _machine()
    results = []
    for step in steps:
        results.append(_run(step, args.out))
        print(f"{step.name}: {results[-1]['ended']} in {results[-1]['seconds']:.0f} s", flush=True)
    atomic_write_text(json.dumps(dict(machine=machine, steps=results), indent=2) + "\n", args.out / "pack.json")
    lines = [f"GPU evidence pack on {machine['device']}, torch {machine['torch']} (CUDA {machine['cuda']})", ""]
    lines += ["| step | ended | seconds | log |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['ended']} | {r['seconds']:.0f} | {r['log']} |" for r in results]
    atomic_write_text("\n".join(lines) + "\n", args.out / "summary.md")
    return 0 if all(result["returncode"] == 0 for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
