"""An on-disk cache for generated data sets: tensors saved once per name and parameters, loaded after that."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["cache_dir", "cache_path", "cached"]


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``root``, else ``$ELFATT_DATA_DIR``, else ``~/.cache/elfatt/data``."""
    if root is not None:
        return Path(root)
    if os.environ.get("ELFATT_DATA_DIR"):
        return Path(os.environ["ELFATT_DATA_DIR"])
    return Path.home() / ".cache" / "elfatt" / "data"


def cache_path(name: str, params: dict[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """File that holds data set ``name`` built with ``params``: ``<cache_dir>/<name>-<16 hex digits>.pt``.

    The digits are the start of the SHA-256 of ``params`` as JSON with sorted keys, so the order of the keys does
    not matter; values must be JSON-serialisable.
    """
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"name must be a plain file name, got {name!r}")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(root) / f"{name}-{digest}.pt"


def cached(
    name: str,
    params: dict[str, Any],
    build: Callable[[], dict[str, Tensor]],
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """Tensors of data set ``name`` with ``params``: loaded from the cache, or built and saved there first.

    The file is written to a temporary name in the same folder and renamed into place, so a reader never sees half
    a file, and two processes building the same set at once both end with a whole one.

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
        return torch.load(path, weights_only=True)
    data = build()
    if not isinstance(data, dict) or not all(isinstance(value, Tensor) for value in data.values()):
        raise TypeError(f"build must return a dict of tensors, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(data, file)
        # mkstemp makes the file private; a cache is as readable as any other file.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return data
