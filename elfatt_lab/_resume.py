"""What a resumed run may not change: the check that ``elfatt train`` and the diffusion training share."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

__all__ = ["changed_options"]


def changed_options(
    saved: Mapping[str, Any], asked: Mapping[str, Any], resumable: Collection[str], path: Path
) -> str | None:
    """The one-line refusal when ``asked`` (a command's options) differs from ``saved`` (those of the run that wrote
    the checkpoint at ``path``) in an option not in ``resumable``; None when the command continues that run."""
    changed = [key for key in asked if key not in resumable and saved.get(key) != asked[key]]
    if not changed:
        return None
    was = ", ".join(f"{key}={saved.get(key)}" for key in changed)
    now = ", ".join(f"{key}={asked[key]}" for key in changed)
    return (
        f"{path} was saved by a run with {was}, but this command has {now}: resume with the run's options, "
        "or start a new run with another --out"
    )
