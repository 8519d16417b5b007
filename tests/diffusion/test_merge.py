"""ToMe-SD token merging on a grid: counts, averaging, exact unmerge of untouched tokens."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from elfatt.diffusion import bipartite_soft_matching_2d, latent_grid  # noqa: E402


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (3, 16), (1, 5)])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9])
def test_merge_counts_and_unmerge(size, ratio):
    generator = torch.Generator().manual_seed(size[0] * 100 + size[1])
    tokens = size[0] * size[1]
    x = torch.randn(3, tokens, 6, generator=generator)
    plan = bipartite_soft_matching_2d(x, size, ratio, generator=generator)
    merged = plan.merge(x)
    sources = tokens - (size[0] // 2) * (size[1] // 2)
    removed = min(int(ratio * tokens), sources) if (size[0] // 2) * (size[1] // 2) else 0
    assert merged.shape == (3, tokens - removed, 6)
    restored = plan.unmerge(merged)
    assert restored.shape == x.shape
    kept_sources = plan.src_indices[0, :, 0][plan.unmerged[..., 0]]  # [B, kept]
    for b in range(3):
        assert torch.equal(restored[b, kept_sources[b]], x[b, kept_sources[b]])
        for dst_slot, position in enumerate(plan.dst_indices[0, :, 0].tolist()):
            group = [position] + [
                plan.src_indices[0, plan.merged[b, i, 0], 0].item()
                for i in range(plan.merged.shape[1])
                if plan.targets[b, i, 0].item() == dst_slot
            ]
            expected = x[b, group].mean(dim=0)
            assert torch.allclose(restored[b, group], expected.expand(len(group), -1), atol=1e-6)


def test_zero_ratio_is_identity():
    x = torch.randn(2, 35, 4)
    plan = bipartite_soft_matching_2d(x, (5, 7), 0.0)
    assert torch.equal(plan.unmerge(plan.merge(x)), x)


def test_merge_rejects_bad_input():
    with pytest.raises(ValueError, match="does not match"):
        bipartite_soft_matching_2d(torch.randn(1, 10, 4), (3, 4), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        bipartite_soft_matching_2d(torch.randn(1, 12, 4), (3, 4), 1.0)


@pytest.mark.parametrize(
    "latent, tokens, expected",
    [((64, 64), 4096, (64, 64)), ((64, 64), 256, (16, 16)), ((13, 20), 20, (4, 5)), ((96, 64), 96, (12, 8))],
)
def test_latent_grid_follows_stride_two_downsampling(latent, tokens, expected):
    assert latent_grid(latent, tokens) == expected


def test_latent_grid_unknown_count():
    assert latent_grid((64, 64), 1000) is None


def test_merge_count_is_tome_sds():
    """int(ratio * N), as ToMe-SD: 15 tokens at 0.5 merge 7 (round would give 8)."""
    plan = bipartite_soft_matching_2d(torch.randn(1, 15, 4), (3, 5), 0.5)
    assert plan.merge(torch.randn(1, 15, 4)).shape[1] == 15 - 7
