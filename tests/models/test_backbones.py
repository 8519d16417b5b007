"""The timm model contract of CSWin-ELFATT and Swin-ELFATT on reduced-size configs: shapes, gradients, features."""

from __future__ import annotations

import pytest
import torch

import elfatt.models as models
from elfatt import BlockCount
from elfatt.models import CSWinELFATT, SwinELFATT

# Reduced configs: the real layouts' structure (4 stages, conv merging, split heads) at a fraction of the cost.
SMALL = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4), num_classes=7)
FAMILIES = ["cswin_elfatt_tiny_224", "swin_elfatt_tiny_224"]
# 224x160 halved, a size no stage divides evenly, and a square one.
SIZES = [(112, 80), (70, 50), (64, 64)]


def _small(name: str, **kwargs) -> torch.nn.Module:
    return models.create_model(name, **{**SMALL, **kwargs}).eval()


def _stage_sides(side: int) -> list[int]:
    """A side through the 7x7 stride-4 padding-2 stem, then three 3x3 stride-2 padding-1 merges."""
    sides = [(side - 3) // 4 + 1]
    for _ in range(3):
        sides.append((sides[-1] + 1) // 2)
    return sides


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", FAMILIES)
def test_forward_shapes(name, batch, size, generator):
    model = _small(name)
    x = torch.randn(batch, 3, *size, generator=generator)
    features = model.forward_features(x)
    heights, widths = _stage_sides(size[0]), _stage_sides(size[1])
    assert features.shape == (batch, model.num_features, heights[-1], widths[-1])
    logits = model(x)
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.forward_head(features))


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_items_are_independent(name, generator):
    model = _small(name)
    x = torch.randn(2, 3, 112, 80, generator=generator)
    torch.testing.assert_close(model(x)[1:], model(x[1:]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_backward_reaches_every_parameter(name, generator):
    model = _small(name, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 70, 50, generator=generator, requires_grad=True)
    model(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_and_plain_attention_agree(name, generator):
    model = _small(name)
    x = torch.randn(2, 3, 70, 50, generator=generator)
    fused = model(x)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    torch.testing.assert_close(model(x), fused, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_intermediates(name, generator):
    model = _small(name)
    x = torch.randn(2, 3, 112, 80, generator=generator)
    final, maps = model.forward_intermediates(x)
    heights, widths = _stage_sides(112), _stage_sides(80)
    assert [tuple(m.shape) for m in maps] == [
        (2, info["num_chs"], h, w) for info, h, w in zip(model.feature_info, heights, widths, strict=True)
    ]
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    torch.testing.assert_close(final, model.forward_features(x))

    last = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    assert len(last) == 1
    torch.testing.assert_close(last[0], final)
    chosen = model.forward_intermediates(x, indices=[0, -2], output_fmt="NHWC", intermediates_only=True)
    torch.testing.assert_close(chosen[0], maps[0].permute(0, 2, 3, 1))
    torch.testing.assert_close(chosen[1], maps[2].permute(0, 2, 3, 1))
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], maps[1])
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("feature_cls", ["list", "getter", "hook", "fx"])
@pytest.mark.parametrize("name", FAMILIES)
def test_features_only(name, feature_cls, generator):
    """Every timm feature wrapper gives the stage maps of forward_intermediates (same seed, same weights)."""
    torch.manual_seed(0)
    full = _small(name)
    torch.manual_seed(0)
    backbone = models.create_model(name, **SMALL, features_only=True, out_indices=(0, 2), feature_cls=feature_cls)
    backbone.eval()
    x = torch.randn(2, 3, 112, 80, generator=generator)
    maps = backbone(x)
    maps = list(maps.values()) if isinstance(maps, dict) else maps
    assert backbone.feature_info.channels() == [16, 64]
    assert backbone.feature_info.reduction() == [4, 16]
    assert [tuple(m.shape) for m in maps] == [(2, 16, 28, 20), (2, 64, 7, 5)]
    reference = full.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    for got, want in zip(maps, reference, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_head_and_reset_classifier(name, generator):
    model = _small(name)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
    assert model.get_classifier() is model.head

    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (2, 5)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)
    model.reset_classifier(3, global_pool="")
    assert model(x).shape == (2, 3, *features.shape[2:])
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")


@pytest.mark.parametrize("name", FAMILIES)
def test_grad_checkpointing_matches(name, generator):
    model = _small(name).train()
    x = torch.randn(2, 3, 70, 50, generator=generator)
    out = model(x)
    out.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(block.grad_checkpointing for stage in model.stages for block in stage.blocks)
    out_checkpointed = model(x)
    out_checkpointed.square().mean().backward()
    torch.testing.assert_close(out_checkpointed, out)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], msg=lambda m, k=k: f"{k}: {m}")
    model.set_grad_checkpointing(False)
    assert not any(block.grad_checkpointing for stage in model.stages for block in stage.blocks)


@pytest.mark.parametrize("name", FAMILIES)
def test_drop_path_is_stochastic_in_training_only(name, generator):
    model = _small(name, drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64, generator=generator)
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(x))


def test_block_layouts():
    cswin = _small("cswin_elfatt_tiny_224")
    swin = _small("swin_elfatt_tiny_224")
    assert [s.blocks[0].attn.block for s in cswin.stages] == [(8, 1), (4, 1), (4, 1), (1, 1)]
    assert [s.blocks[0].attn.block for s in swin.stages] == [(4, 2), (2, 2), (2, 2), (1, 1)]
    assert all(isinstance(s.blocks[0].attn.block, BlockCount) for s in (*cswin.stages, *swin.stages))
    # At 224 the last stage is one 7x7 block: full softmax on the block heads.
    assert cswin.stages[3].blocks[0].attn.block_size((7, 7)) == (7, 7)
    assert cswin.stages[0].blocks[0].attn.block_size((56, 56)) == (7, 56)
    assert swin.stages[0].blocks[0].attn.block_size((56, 56)) == (14, 28)
    assert all(b.attn.num_global_heads * 2 == b.attn.num_heads for s in cswin.stages for b in s.blocks)
    assert isinstance(cswin, CSWinELFATT) and isinstance(swin, SwinELFATT)


def test_fixed_block_sizes_and_set_input_size(generator):
    model = _small("cswin_elfatt_tiny_224", block=(2, None))
    assert [s.blocks[0].attn.block_size((56, 56)) for s in model.stages] == [(2, 56)] * 4
    # A caller's block sizes replace a variant's own block counts.
    base = _small("swin_elfatt_base_224", block=[7, 7, (7, None), 7])
    assert [s.blocks[0].attn.block_size((56, 56)) for s in base.stages] == [(7, 7), (7, 7), (7, 56), (7, 7)]
    x = torch.randn(1, 3, 96, 64, generator=generator)
    before = model(x)
    model.set_input_size((96, 64), block=[BlockCount(4, 1), BlockCount(2, 1), BlockCount(2, 1), BlockCount(1, 1)])
    assert model.img_size == (96, 64)
    assert [s.blocks[-1].attn.block_size((24, 16)) for s in model.stages] == [(6, 16), (12, 16), (12, 16), (24, 16)]
    assert not torch.allclose(model(x), before)
    model.set_input_size(block=[(2, None)] * 4)
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="one entry per stage"):
        model.set_input_size(block=[2, 2, 2])


def test_the_old_block_keywords_of_the_backbones_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="block_sizes= is deprecated"):
        model = _small("cswin_elfatt_tiny_224", block_sizes=(2, None))
    assert [s.blocks[0].attn.block for s in model.stages] == [(2, None)] * 4
    # b blocks as each family lays them out: stripes in CSWin, the squarest windows in Swin
    with pytest.warns(DeprecationWarning, match="num_blocks= is deprecated"):
        model.set_input_size(num_blocks=(4, 2, 2, 1))
    assert [s.blocks[0].attn.block for s in model.stages] == [(4, 1), (2, 1), (2, 1), (1, 1)]
    with pytest.warns(DeprecationWarning):
        swin = _small("swin_elfatt_base_224", num_blocks=8)
    assert [s.blocks[0].attn.block for s in swin.stages] == [BlockCount(4, 2)] * 4
    with pytest.raises(ValueError, match="give only block="):
        model.set_input_size(num_blocks=2, block_sizes=2)
    with pytest.raises(ValueError, match="give only block="):
        model.set_input_size(block=2, num_blocks=2)


@pytest.mark.parametrize("name", ["swin_elfatt_tiny_hr", "swin_elfatt_base_hr"])
def test_high_resolution_variants_keep_8x8_windows_at_any_input(name, generator):
    model = _small(name)
    sides = [(128, 128), (56, 56), (31, 45)]
    for stage in model.stages:
        for block in stage.blocks:
            assert [block.attn.block_size(side) for side in sides] == [(8, 8), (8, 8), (8, 8)]
    # The 224 model's weights load unchanged: only the blocks differ.
    model.load_state_dict(_small(name.replace("_hr", "_224")).state_dict())
    assert model(torch.randn(1, 3, 96, 160, generator=generator)).shape == (1, 7)


def test_bad_arguments_raise_clear_errors(generator):
    model = _small("cswin_elfatt_tiny_224")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 4, 64, 64, generator=generator))
    with pytest.raises(ValueError, match="at least 3x3"):
        model(torch.randn(1, 3, 2, 64, generator=generator))
    with pytest.raises(ValueError, match="give only block="):
        CSWinELFATT(**SMALL, num_blocks=2, block_sizes=4)
    with pytest.raises(ValueError, match="one entry per stage"):
        CSWinELFATT(**{**SMALL, "num_heads": (2, 2, 4)})
    with pytest.raises(ValueError, match="whole number"):
        CSWinELFATT(**{**SMALL, "num_heads": (1, 2, 4, 4)})
    with pytest.raises(ValueError, match="global_pool"):
        CSWinELFATT(**SMALL, global_pool="max")
