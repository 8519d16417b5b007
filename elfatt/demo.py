"""A short demo: an ELFATT layer against SDPA global attention at growing grid sizes, timed on this machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from elfatt.modules import ELFATTAttention

__all__ = ["run_demo"]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _sdpa_layer(layer: ELFATTAttention, x: torch.Tensor) -> torch.Tensor:
    """Global SDPA attention with the layer's own qkv and proj."""
    batch, tokens, dim = x.shape
    qkv = layer.qkv(x).reshape(batch, tokens, 3, layer.num_heads, layer.head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(*qkv.unbind(0))
    return layer.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def run_demo(sides: Sequence[int] = (16, 32, 64, 96), dim: int = 256, heads: int = 8, repeats: int = 5) -> None:
    """Print the forward time of an ELFATT layer and of SDPA global attention (same qkv/proj) per grid size."""
    torch.manual_seed(0)
    layer = ELFATTAttention(dim, heads).eval()
    print(f"ELFATTAttention(dim={dim}, heads={heads}, block={layer.block}) vs SDPA global attention, batch 1,")
    print(f"forward only, median of {repeats} on {torch.get_num_threads()} threads")
    print(f"{'grid':>9} {'tokens':>7} {'ELFATT ms':>10} {'SDPA ms':>10} {'SDPA/ELFATT':>12}")
    for side in sides:
        x = torch.randn(1, side * side, dim)

        with torch.inference_mode():
            ours = _median_ms(lambda: layer(x, (side, side)), repeats)  # noqa: B023 (called within the iteration)
            theirs = _median_ms(lambda: _sdpa_layer(layer, x), repeats)  # noqa: B023
        print(f"{side:>4}x{side:<4} {side * side:>7} {ours:>10.2f} {theirs:>10.2f} {theirs / ours:>11.2f}x")
