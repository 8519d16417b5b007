"""Parameters and FLOPs of the full-size variants at 224 against the paper's table, counted on the meta device.

The paper counts multiply-adds ("FLOPs" = MACs); "FA" leaves out the blockified heads' softmax matmuls,
which FlashAttention does. CSWin-S is not in the paper.
"""

from __future__ import annotations

import pytest
import torch
from model_helpers import count_params_flops, meta_device  # noqa: F401

import elfatt.models as models

# name: (params M, GMACs nFA, GMACs FA) from the authors' table, and the relative tolerance.
PAPER = {
    "cswin_elfatt_tiny_224": ((20.4, 4.44, 4.13), 0.01),
    "swin_elfatt_tiny_224": ((30.0, 4.99, 4.67), 0.01),
    "cswin_elfatt_base_224": ((73.05, 15.47, 14.46), 0.005),
    "swin_elfatt_base_224": ((91.0, 16.46, 15.68), 0.005),
}


@pytest.mark.parametrize("name", list(PAPER))
def test_params_and_flops_match_the_paper(name, meta_device):  # noqa: F811
    model = models.create_model(name)
    assert next(model.parameters()).device.type == "meta"
    params, nfa, fa = count_params_flops(model, (224, 224))
    (paper_params, paper_nfa, paper_fa), tolerance = PAPER[name]
    assert params / 1e6 == pytest.approx(paper_params, rel=tolerance)
    assert nfa == pytest.approx(paper_nfa, rel=tolerance)
    assert fa == pytest.approx(paper_fa, rel=tolerance)


def test_fixed_block_counts_make_the_sparse_part_grow_quadratically(meta_device):  # noqa: F811
    """Blocks are counted, not sized: at 384 the blocks grow, and the sparse part with m^2 (x8.6 over 224)."""
    model = models.create_model("swin_elfatt_tiny_224")
    _, nfa_224, fa_224 = count_params_flops(model, (224, 224))
    _, nfa_384, fa_384 = count_params_flops(model, (384, 384))
    assert (nfa_384 - fa_384) / (nfa_224 - fa_224) == pytest.approx((384 / 224) ** 4, rel=0.05)
    model.set_input_size(384, block=[(14, 28), (14, 14), (7, 7), (7, 7)])
    _, nfa_fixed, fa_fixed = count_params_flops(model, (384, 384))
    # Only the per-block LePE convs change: they run on zero-padded edge blocks.
    assert fa_fixed == pytest.approx(fa_384, rel=1e-3)
    # Fixed-size blocks: at most linear in m (edge blocks that do not fill up are cheaper still).
    ratio = (nfa_fixed - fa_fixed) / (nfa_224 - fa_224)
    assert 0.8 * (384 / 224) ** 2 < ratio <= (384 / 224) ** 2


def test_other_variants_parameters(meta_device):  # noqa: F811
    counts = {
        name: sum(p.numel() for p in models.create_model(name).parameters()) / 1e6
        for name in models.list_models("*_elfatt_*")
    }
    assert counts["cswin_elfatt_small_224"] == pytest.approx(34.6, abs=0.1)
    assert counts["swin_elfatt_small_224"] == pytest.approx(51.6, abs=0.1)
    assert counts["cswin_elfatt_base_384"] == counts["cswin_elfatt_base_224"]
    assert counts["swin_elfatt_tiny_hr"] == counts["swin_elfatt_tiny_224"]
    assert counts["swin_elfatt_base_hr"] == counts["swin_elfatt_base_224"]


def test_reset_classifier_keeps_device_dtype_and_mode_in_every_variant(meta_device):  # noqa: F811
    for name in models.list_models("*_elfatt_*"):
        model = models.create_model(name, dtype=torch.float64).train()
        model.reset_classifier(7)
        head = model.get_classifier()
        assert (head.weight.device.type, head.weight.dtype, head.training) == ("meta", torch.float64, True), name
        assert head.out_features == 7, name
