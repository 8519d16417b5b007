"""Loading files a user can name or place: ``torch.load(weights_only=True)``, which unpickles tensors, numbers,
strings and plain containers only and refuses anything that would run code."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_weights_only", "plain_config"]

# Checkpoints written before configs were stored as plain values hold pathlib paths; rebuilding one from its string
# parts runs no code of the file's choosing.
_LEGACY_PATH_TYPES = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def load_weights_only(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; pickled code raises ``pickle.UnpicklingError`` and never runs."""
    with torch.serialization.safe_globals(_LEGACY_PATH_TYPES):
        return torch.load(path, map_location=map_location, weights_only=True)


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a dataclass's ``asdict``) with paths as strings, so a checkpoint holds plain values only."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in config.items()}
