"""What every command line shares: an argument parser whose errors are one line, and argument types that refuse
what a command could not use (a value out of range, a device that is not there, an output path that cannot be
written) while the options are parsed, before any work starts."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "OneLineErrorParser",
    "device",
    "finite_float",
    "fraction",
    "int_at_least",
    "one_line",
    "output_file",
    "output_folder",
    "writable_folder_error",
]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2, with no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def finite_float(low: float = 0.0, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite float ``>= low`` (``> low`` when not ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a float in ``[0, 1)``."""
    value = finite_float(0.0)(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def device(text: str) -> str:
    """An argparse type: a device this machine has that computes (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cpu":
        return text
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device (torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return text
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
        return text
    raise argparse.ArgumentTypeError(f"{text}: computes nothing here; use cpu, cuda or mps")


def writable_folder_error(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (made if missing), or None when they can."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} exists and is not a folder"
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{folder} cannot be made: {ancestor} is a file"
    try:  # a probe says what permissions, read-only mounts and pseudo file systems allow, root or not
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        return f"{folder} cannot be written: {ancestor}: {error.strerror or error}"
    return None


def output_folder(text: str) -> Path:
    """An argparse type: a folder that exists and is writable, or that can be made."""
    folder = Path(text)
    problem = writable_folder_error(folder)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return folder


def output_file(text: str) -> Path:
    """An argparse type: a file path whose folder is writable (or can be made), not a folder itself."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give the file's path")
    problem = writable_folder_error(path.parent)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {path.name}: {problem}")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{path} exists and is not writable")
    return path


def one_line(error: BaseException) -> str:
    """``error``'s message as one line: a DataLoader worker's re-raised error gives its original message (the last
    line of the worker's traceback), anything else its first line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        name, _, message = lines[-1].partition(": ")
        return message if message and " " not in name else lines[-1]
    return lines[0]
