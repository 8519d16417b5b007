"""An on-disk cache for generated data sets: tensors saved once per name and parameters, loaded after that."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from elfatt_lab._arguments import one_line
from elfatt_lab._atomic import atomic_save

__all__ = ["cache_dir", "cache_path", "cached", "checksum"]


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``root``, else ``$ELFATT_DATA_DIR``, else ``~/.cache/elfatt_lab/data``."""
    if root is not None:
        return Path(root)
    if os.environ.get("ELFATT_DATA_DIR"):
        return Path(os.environ["ELFATT_DATA_DIR"])
    return Path.home() / ".cache" / "elfatt_lab" / "data"


def cache_path(name: str, params: dict[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """File that holds data set ``name`` built with ``params``: ``<cache_dir>/<name>-<16 hex digits>.pt``.

    The digits are the start of the SHA-256 of ``params`` as JSON with sorted keys, so the order of the keys does
    not matter; values must be JSON-serialisable.
    """
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"name must be a plain file name, got {name!r}")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(root) / f"{name}-{digest}.pt"


def checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors``, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_whole(path: Path) -> dict[str, Tensor] | str:
    """The tensors cached at ``path``, or why they cannot be trusted (unreadable, no checksum, or another one)."""
    try:
        entry = torch.load(path, weights_only=True)
    except Exception as error:  # a truncated or garbled file: all that matters is that it cannot be read
        return f"it cannot be read ({one_line(error)})"
    if not isinstance(entry, dict) or set(entry) != {"tensors", "sha256"}:
        return "it has no checksum (written by an older elfatt)"
    if checksum(entry["tensors"]) != entry["sha256"]:
        return "its contents do not match their checksum"
    return entry["tensors"]


def cached(
    name: str,
    params: dict[str, Any],
    build: Callable[[], dict[str, Tensor]],
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """Tensors of data set ``name`` with ``params``: loaded from the cache, or built and saved there first.

    Each entry is saved with the SHA-256 of its tensors and written atomically
    (:func:`~elfatt_lab._atomic.atomic_save`), so a reader never sees half a file and two processes building the
    same set at once both end with a whole one. An entry that cannot be read or fails its checksum is rebuilt, with
    a one-line notice on stderr.

    Args:
        name: data set name, the start of the file name.
        params: everything the tensors depend on (JSON-serialisable); it names the file.
        build: makes the tensors when they are not cached.
        root: cache folder; see :func:`cache_dir`.

    Returns:
        The tensors by name.
    """
    path = cache_path(name, params, root)
    if path.exists():
        loaded = _load_whole(path)
        if not isinstance(loaded, str):
            return loaded
        print(f"elfatt: the cached {name} data set {path} is damaged: {loaded}; rebuilding it", file=sys.stderr)
    data = build()
    if not isinstance(data, dict) or not all(isinstance(value, Tensor) for value in data.values()):
        raise TypeError(f"build must return a dict of tensors, got {type(data).__name__}")
    # The cache is as readable as any other file, not private as mkstemp makes it.
    try:
        atomic_save(dict(tensors=data, sha256=checksum(data)), path, mode=0o644)
    except (OSError, RuntimeError) as error:  # a full disk or a read-only cache: the data is in memory, go on
        print(f"elfatt: could not cache the {name} data set ({one_line(error)}); going on without", file=sys.stderr)
    return data
