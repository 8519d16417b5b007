"""Training checkpoints: written atomically, read back with one-line errors, checked against the run resuming them.

A checkpoint is written to a temporary file in its own folder, flushed and fsynced, then renamed over the old one
(``os.replace``, atomic on POSIX), so a crash, a kill or a full disk during a save leaves the previous checkpoint
whole. Temporary files left by writers that died are removed by the next save into the same folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from elfatt_lab._arguments import one_line
from elfatt_lab._atomic import atomic_save, remove_stale_temporaries
from elfatt_lab._resume import changed_options
from elfatt_lab._safe_load import load_weights_only, plain_config

__all__ = [
    "CHECKPOINT_KEYS",
    "RESUMABLE_CHANGES",
    "CheckpointError",
    "check_resume",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "saved_config",
]

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "history", "config")
# What a resumed run may change: where it writes, how long it trains, where it runs, how it loads and reports.
RESUMABLE_CHANGES = frozenset({"epochs", "out", "resume", "overwrite", "progress", "workers", "device", "data_dir"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the command; the message is one line."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (:func:`~elfatt_lab._atomic.atomic_save`): whatever happens during the
    save, ``path`` holds either the previous checkpoint or the new one, whole."""
    atomic_save(state, path)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``.

    Raises:
        CheckpointError: in one line, for a missing, truncated, empty or foreign file, naming the other readable
            checkpoints of the same folder to resume from instead.
    """
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = load_weights_only(path, map_location)
    except Exception as error:  # a truncated zip, an empty file, pickled code: all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path} ({one_line(error)}); {_alternatives(path)}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        what = f"no {', '.join(missing)}"
        raise CheckpointError(f"{path} is not a checkpoint of elfatt train ({what}); {_alternatives(path)}")
    return state


def _alternatives(path: Path) -> str:
    """What to do instead of resuming from the unreadable ``path``: the folder's other checkpoints, by name only
    (none of them is opened: a file placed there is not read unasked)."""
    others = [str(other) for other in sorted(path.parent.glob("*.pt")) if other.resolve() != path.resolve()]
    if others:
        listed = ", ".join(others)
        return f"other checkpoints in its folder: {listed}; resume from one, or start afresh without --resume"
    return "no other checkpoint in its folder: start afresh without --resume"


# Options added since early checkpoints whose default does not describe those runs: the value that does.
LEGACY_VALUES = {"recipe": 1}


def saved_config(state: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """The config a checkpoint was saved with; an option added since then at its :data:`LEGACY_VALUES` entry, or
    else at its default in ``defaults`` (a ``TrainConfig``), which keeps the old behaviour."""
    saved = state["config"]
    if not isinstance(saved, dict):
        kind = type(saved).__name__
        raise CheckpointError(f"the checkpoint's config is a {kind}, not a dict: not a run of elfatt train")
    defaults = plain_config(asdict(defaults))
    return {key: saved.get(key, LEGACY_VALUES.get(key, default)) for key, default in defaults.items()}


def check_resume(state: dict[str, Any], config: Any, path: Path) -> int:
    """Check that ``config`` (a ``TrainConfig``) continues the run saved in ``state``; return the first epoch to
    train.

    Raises:
        CheckpointError: the command differs from the run in anything but :data:`RESUMABLE_CHANGES`, or asks for
            no more epochs than the checkpoint has trained.
    """
    asked = plain_config(asdict(config))
    refusal = changed_options(saved_config(state, type(config)()), asked, RESUMABLE_CHANGES, path)
    if refusal:
        raise CheckpointError(refusal)
    done = int(state["epoch"]) + 1
    if config.epochs <= done:
        raise CheckpointError(f"{path} has trained {done} epochs already, --epochs is {config.epochs}: pass more")
    return done
