"""A run's output folder, owned while the run writes to it: a lock file naming the writing process, and no other
run's checkpoints overwritten unless the command says so."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from elfatt_lab._atomic import atomic_write_bytes, process_runs

__all__ = ["RunFolderError", "owned_run_folder", "LOCK_NAME"]

LOCK_NAME = ".elfatt-run.lock"


class RunFolderError(ValueError):
    """The folder is in use by another run, or holds another run's results; the message is one line."""


@contextlib.contextmanager
def owned_run_folder(out: Path, checkpoints: Sequence[str], *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold ``out`` for the ``with`` block.

    Args:
        out: the run's folder, made if missing.
        checkpoints: the file names a run leaves there; a new run refuses a folder that holds any of them.
        resume: the command continues a run, so its files are expected there.
        overwrite: the command replaces whatever run the folder holds.

    Raises:
        RunFolderError: another live process holds the folder (its pid named), or, unless ``resume`` or
            ``overwrite``, the folder holds another run's checkpoints. A lock left by a dead process is taken over.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    _take(lock)
    try:
        found = [name for name in checkpoints if (out / name).exists()]
        if found and not (resume or overwrite):
            raise RunFolderError(
                f"{out} holds another run's {', '.join(found)}: pass --resume to continue it, --overwrite to replace "
                "it, or choose another --out"
            )
        yield
    finally:
        if _holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _holder(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _take(lock: Path) -> None:
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = _holder(lock)
        if holder is not None and holder != os.getpid() and process_runs(holder):
            raise RunFolderError(
                f"{lock.parent} is in use by another run (pid {holder}, {lock}); wait for it, or choose another --out"
            ) from None
        # a stale lock of a dead process (or an unreadable one): taken over, then checked that it is ours
        atomic_write_bytes(f"{os.getpid()}\n".encode(), lock)
        if _holder(lock) != os.getpid():
            raise RunFolderError(
                f"{lock.parent} was taken by another run at the same moment; choose another --out"
            ) from None
        return
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{os.getpid()}\n")
