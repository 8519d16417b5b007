"""Memory a benchmark cell needs, estimated before anything is allocated, against what the machine has free."""

from __future__ import annotations

from elfatt_lab._memory import available_mib
from elfatt_lab.bench.models import VIT_LAYOUTS

__all__ = ["available_mib", "estimate_mib", "input_mib"]

# Tensors a layer keeps per token and channel, a generous count (q, k, v, their copies, outputs, and in a backward
# their gradients), so that an estimate errs on the side of refusing.
LIVE_TENSORS = 40
# Mechanisms that materialise every head's N x N scores (the rest attend in blocks, linearly, or through a flash
# kernel that never holds the full matrix).
MATERIALISE_SCORES = {"vanilla"}


def _shape(cell, config) -> tuple[int, int, int]:
    """Channels, heads and layers of a cell's model."""
    if cell.level == "op":
        return config.dim, config.heads, 1
    dim, depth, heads = VIT_LAYOUTS[config.layout]
    return dim, heads, depth


def input_mib(cell, config) -> float:
    """The cell's tokens alone, ``batch x tokens x channels`` in float32."""
    dim, _, _ = _shape(cell, config)
    return config.batch * cell.tokens * dim * 4 / 2**20


def estimate_mib(cell, config) -> float:
    """An upper estimate of a cell's peak memory: :data:`LIVE_TENSORS` copies of its tokens per layer (all layers'
    kept for a backward), plus the score matrices of mechanisms that materialise them."""
    dim, heads, layers = _shape(cell, config)
    backward = cell.run_pass == "fwd+bwd"
    kept = layers if backward else 1
    linear = config.batch * cell.tokens * dim * 4 * LIVE_TENSORS * kept
    scores = 0
    if cell.mechanism in MATERIALISE_SCORES:
        scores = config.batch * heads * cell.tokens**2 * 4 * (3 * kept if backward else 2)
    return (linear + scores) / 2**20
