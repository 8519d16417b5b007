"""The model-level backbone runs every mechanism on square and non-square images."""

from __future__ import annotations

import pytest
import torch

from elfatt_lab.attention import MECHANISMS, build_attention, check_mechanisms
from elfatt_lab.bench.models import AttentionViT


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_vit_runs_every_mechanism(mechanism):
    model = AttentionViT(mechanism, "vit_micro", num_classes=7)
    for height, width in ((32, 32), (48, 80)):
        logits = model(torch.randn(2, 3, height, width))
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_vit_rejects_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        AttentionViT("elfatt", "vit_tiny")(torch.randn(1, 3, 40, 32))


def test_elfatt_takes_an_odd_head_count():
    assert AttentionViT("elfatt", "vit_tiny").blocks[0].attn.num_global_heads == 1


def test_unknown_names_are_listed():
    with pytest.raises(ValueError, match="unknown mechanism foo"):
        check_mechanisms(["elfatt", "foo"])
    with pytest.raises(ValueError, match="unknown layout"):
        AttentionViT("elfatt", "vit_huge")
    assert build_attention("elfatt", 32, 4)(torch.randn(1, 12, 32), (3, 4)).shape == (1, 12, 32)
