"""The samples each evaluation setting generated, kept on disk so that an evaluation cut off (a session's end, a
kill) resumes at the setting it was on. A setting's file is reused only when everything that decides its images is
the same: the generator's weights, the source of :mod:`elfatt` (for patched settings), the setting's options, the
seeds, steps, guidance, batch size and threads; otherwise it is generated again and the file replaced."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

import elfatt
from elfatt_lab._atomic import atomic_write_bytes

__all__ = ["Generated", "file_digest", "load_generated", "run_key", "save_generated"]


@dataclass(frozen=True)
class Generated:
    """One setting's samples and the time their generation took."""

    images: Tensor
    seconds: float
    self_attention_seconds: float


def file_digest(path: Path) -> str:
    """The SHA-256 of the file's bytes, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache  # the source this process imported: read once, not once per setting
def _elfatt_source_digest() -> str:
    digest = hashlib.sha256()
    root = Path(elfatt.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_key(weights_digest: str, *, runs_elfatt: bool, **decisive: object) -> dict[str, str]:
    """What decides a setting's images: the generator's weights (their file's :func:`file_digest`), elfatt's source
    where the setting ``runs_elfatt`` (the original attention does not), and the ``decisive`` values (JSON)."""
    key = dict(weights=weights_digest, **{name: json.dumps(value, sort_keys=True) for name, value in decisive.items()})
    if runs_elfatt:
        key["elfatt_source"] = _elfatt_source_digest()
    return key


def save_generated(path: Path, key: dict[str, str], generated: Generated) -> None:
    """``generated`` to ``path`` (safetensors, written atomically) with ``key`` in its metadata."""
    from safetensors.torch import save

    metadata = dict(key, seconds=repr(generated.seconds), self_attention_seconds=repr(generated.self_attention_seconds))
    atomic_write_bytes(save({"images": generated.images.contiguous()}, metadata=metadata), path)


def load_generated(path: Path, key: dict[str, str]) -> Generated | None:
    """The samples saved at ``path`` when they were generated under ``key``; None when there are none or they were
    generated otherwise (or the file is not one of ours)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if any(metadata.get(name) != value for name, value in key.items()):
                return None
            images = file.get_tensor("images")
        return Generated(images, float(metadata["seconds"]), float(metadata["self_attention_seconds"]))
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
