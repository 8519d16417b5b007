"""What one layer call issues, counted by torch.profiler: a fixed number of ops whatever the grid, and a bound
against timm's Attention of the same size (a ViT-S layer at 224 px and beyond)."""

from __future__ import annotations

import pytest
import torch

from elfatt import ELFATTAttention
from elfatt_lab.bench.op_count import count_ops

timm_layers = pytest.importorskip("timm.layers")

# (H, W, batch): the ViT-S grid at 224 px (8x8 blocks leave edges), one that divides, a non-square one, a large one
GRIDS = [(14, 14, 8), (16, 16, 8), (15, 22, 8), (64, 64, 1)]


@pytest.fixture(scope="module")
def counts() -> dict:
    torch.manual_seed(0)
    elfatt_layer = ELFATTAttention(384, 6, qkv_bias=True).eval()
    timm_layer = timm_layers.Attention(384, 6, qkv_bias=True).eval()
    found = {}
    with torch.no_grad():
        for height, width, batch in GRIDS:
            x = torch.randn(batch, height * width, 384)
            found[height, width] = (
                count_ops(lambda x=x, size=(height, width): elfatt_layer(x, size)),
                count_ops(lambda x=x: timm_layer(x)),
            )
    return found


def test_the_same_ops_whatever_the_grid(counts):
    """Blocks that leave edges (14x14, 15x22) cost no more calls than blocks that divide: at most the mask's add."""
    totals = {grid: elfatt_count.total for grid, (elfatt_count, _) in counts.items()}
    assert max(totals.values()) - min(totals.values()) <= 4, totals
    computes = {grid: elfatt_count.compute for grid, (elfatt_count, _) in counts.items()}
    assert max(computes.values()) - min(computes.values()) <= 1, computes


def test_bounded_against_timm(counts):
    """Recorded here: 182 aten ops (20 that compute or copy) against timm's 59 (5) at 14x14; the issue's target
    of 2x is not met (see the README); this bound keeps it from growing back toward the 521 it was."""
    for grid, (elfatt_count, timm_count) in counts.items():
        assert elfatt_count.total <= 3.2 * timm_count.total, (grid, elfatt_count, timm_count)
        assert elfatt_count.compute <= 5 * timm_count.compute, (grid, elfatt_count, timm_count)
