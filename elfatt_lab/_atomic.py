"""Files written atomically: a temporary file in the target's folder, flushed and fsynced, renamed over the target
(``os.replace``, atomic on POSIX), so a crash, a kill or a full disk during a write leaves the previous file whole.
Temporary files carry their writer's process id, so those of writers that died are found and removed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "atomic_save",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_text",
    "process_runs",
    "remove_stale_temporaries",
]


def atomic_save(obj: Any, path: Path, *, mode: int | None = None) -> None:
    """``torch.save(obj)`` to ``path`` atomically: whatever happens, ``path`` holds the previous file or the new
    one, whole. ``mode`` sets the new file's permissions (``mkstemp`` makes it private)."""
    _write_atomically(lambda file: torch.save(obj, file), path, mode)


def atomic_write_bytes(data: bytes, path: Path, *, mode: int | None = 0o644) -> None:
    """``data`` to ``path`` atomically, as :func:`atomic_save` (readable by all by default)."""
    _write_atomically(lambda file: file.write(data), path, mode)


def atomic_write_text(text: str, path: Path) -> None:
    """``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write_bytes`."""
    atomic_write_bytes(text.encode(), path)


def atomic_save_figure(figure: Any, path: Path, **options: Any) -> None:
    """A matplotlib ``figure`` saved to ``path`` atomically (its format from the suffix), ``options`` to
    ``savefig``."""
    _write_atomically(lambda file: figure.savefig(file, format=path.suffix.lstrip(".") or None, **options), path, 0o644)


def _write_atomically(write: Callable[[BinaryIO], object], path: Path, mode: int | None) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        # named after the file the caller asked for, not the temporary one
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except RuntimeError as error:
        # torch.save's writer turns a failed write (a full disk) into a RuntimeError of its own
        Path(temporary).unlink(missing_ok=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(None, f"writing failed ({reason})", str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable: fsync the folder's entry table (not possible on every platform)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of writes to ``path`` whose writing process no longer runs; returns them."""
    removed = []
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temporary.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_runs(int(pid)):
            temporary.unlink(missing_ok=True)
            removed.append(temporary)
    return removed


def process_runs(pid: int) -> bool:
    """Whether a process with this pid runs (or exists and is not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
