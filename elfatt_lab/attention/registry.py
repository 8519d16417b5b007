"""Every attention mechanism by name, ELFATT's variants and ablations and the peers, for bench, train and diffusion."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from elfatt.modules import DEFAULT_BLOCK
from elfatt_lab.attention.elfatt_variants import (
    block_part_alone,
    elfatt_counted_blocks,
    elfatt_fixed_blocks,
    global_part_alone,
)
from elfatt_lab.attention.peers import PEERS

__all__ = ["Mechanism", "MECHANISMS", "build_attention", "check_mechanisms", "takes_key_padding_mask"]


@dataclass(frozen=True)
class Mechanism:
    """A named attention layer ``build(dim, num_heads)`` with ``forward(x [B, N, C], (H, W))``."""

    name: str
    build: Callable[[int, int], nn.Module]
    summary: str
    # An ablation or variant, run only when asked for by name (not in the benchmark's or experiments' defaults).
    variant: bool = False


def _peer(name: str, **options: object) -> Callable[[int, int], nn.Module]:
    return lambda dim, heads: PEERS[name](dim, heads, **options)


MECHANISMS: dict[str, Mechanism] = {
    mechanism.name: mechanism
    for mechanism in (
        Mechanism("vanilla", _peer("vanilla"), "softmax attention, explicit matmuls"),
        Mechanism("sdpa", _peer("sdpa"), "softmax attention, F.scaled_dot_product_attention (Flash on CUDA)"),
        Mechanism(
            "elfatt",
            elfatt_fixed_blocks,
            f"ELFATT, fixed {DEFAULT_BLOCK}x{DEFAULT_BLOCK} blocks (linear in tokens)",
        ),
        Mechanism(
            "elfatt-b4",
            elfatt_counted_blocks,
            "ELFATT, 4 blocks whatever the grid (the paper's b=4)",
        ),
        Mechanism(
            "elfatt-window",
            block_part_alone,
            "ELFATT's blockified part alone: every head in 8x8 blocks (an ablation)",
            variant=True,
        ),
        Mechanism(
            "elfatt-linear",
            global_part_alone,
            "ELFATT's global linear part alone, with LePE (an ablation)",
            variant=True,
        ),
        Mechanism("vanilla-lepe", _peer("vanilla", lepe=True), "vanilla + LePE on the whole grid", variant=True),
        Mechanism(
            "sdpa-lepe", _peer("sdpa", lepe=True), "SDPA softmax attention + LePE on the whole grid", variant=True
        ),
        Mechanism("efficient-lepe", _peer("efficient", lepe=True), "Efficient Attention + LePE", variant=True),
        Mechanism("swin", _peer("swin"), "Swin window attention, 7x7 windows, relative-position bias"),
        Mechanism("cswin", _peer("cswin"), "CSWin cross-shaped window attention, stripes of 7, LePE"),
        Mechanism("efficient", _peer("efficient"), "Efficient Attention (Shen et al.)"),
        Mechanism("flatten", _peer("flatten"), "FLatten focused linear attention (Han et al. 2023)"),
        Mechanism("agent", _peer("agent"), "Agent Attention, 49 agents (Han et al. 2024)"),
    )
}


def check_mechanisms(names: list[str] | tuple[str, ...]) -> list[str]:
    """Return ``names`` after checking each is registered; raises ValueError naming the unknown ones."""
    unknown = [name for name in names if name not in MECHANISMS]
    if unknown:
        raise ValueError(f"unknown mechanism {', '.join(unknown)}; choose from {', '.join(MECHANISMS)}")
    return list(names)


def build_attention(name: str, dim: int, num_heads: int) -> nn.Module:
    """Build the attention layer registered as ``name``."""
    return MECHANISMS[check_mechanisms([name])[0]].build(dim, num_heads)


def takes_key_padding_mask(layer: nn.Module) -> bool:
    """Whether an attention layer can leave padded tokens out (its ``forward`` takes ``key_padding_mask``)."""
    return "key_padding_mask" in inspect.signature(layer.forward).parameters
