"""ViT-ELFATT: prefix-token attention against a float64 reference, the timm model contract, and patch_timm_vit."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_close
from model_helpers import meta_device  # noqa: F401

import elfatt
import elfatt.models as models
import elfatt.ops.reference as reference
from elfatt import BlockCount
from elfatt.models import VisionTransformerELFATT, patch_timm_vit
from elfatt.models.timm_vit_patch import TimmELFATTAttention
from elfatt.models.vit_elfatt import checkpoint_filter_fn, resample_abs_pos_embed
from elfatt.modules import ELFATTAttention

VARIANTS = ["vit_elfatt_tiny_patch16_224", "vit_elfatt_small_patch16_224", "vit_elfatt_base_patch16_224"]
# Reduced config: DeiT-Ti's 3 heads (1 global, 2 blockified) at a fraction of the cost.
SMALL = dict(embed_dim=24, depth=2, num_heads=3, num_classes=7)
# Image sizes: non-square, square, and a grid (5x3) that four windows do not divide.
SIZES = [(64, 48), (32, 32), (80, 48)]


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh random parameters, so that zero-initialised biases and LePE convs are tested too."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)


def reference_prefix_attention(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    size: tuple[int, int],
    num_prefix_tokens: int,
    num_heads: int,
    global_heads: int,
    block: tuple[int, int],
) -> torch.Tensor:
    """ELFATT with prefix tokens, in float64 straight from the equations, from a layer's parameters.

    Global heads: ``softmax_row(Q) softmax_col(K)^T V`` over all tokens, LePE on the grid tokens. Block heads: a
    prefix query attends with softmax to every key, a grid query to the grid keys of its block. Then ``proj``.
    """
    x = x.double()
    params = {name: p.double() for name, p in params.items()}
    batch, tokens, channels = x.shape
    dim, prefix = channels // num_heads, num_prefix_tokens
    qkv = x @ params["qkv.weight"].T
    if "qkv.bias" in params:
        qkv = qkv + params["qkv.bias"]
    # [B, heads, T, d] each
    q, k, v = (
        qkv[..., i * channels : (i + 1) * channels].reshape(batch, tokens, num_heads, dim).transpose(1, 2)
        for i in range(3)
    )
    out = torch.zeros(batch, num_heads, tokens, dim, dtype=torch.float64)
    grid_blocks = [[prefix + i for i in indices] for indices in reference.block_token_indices(size, block)]
    for b in range(batch):
        for h in range(num_heads):
            if h < global_heads:
                out[b, h] = reference.softmax(q[b, h], dim=1) @ (reference.softmax(k[b, h], dim=0).T @ v[b, h])
                continue
            if prefix:
                weights = reference.softmax(q[b, h, :prefix] @ k[b, h].T * dim**-0.5, dim=1)
                out[b, h, :prefix] = weights @ v[b, h]
            for indices in grid_blocks:
                weights = reference.softmax(q[b, h, indices] @ k[b, h, indices].T * dim**-0.5, dim=1)
                out[b, h, indices] = weights @ v[b, h, indices]
    lepe = torch.zeros_like(out)
    if global_heads:
        weight, bias = params["global_lepe.conv.weight"], params["global_lepe.conv.bias"]
        lepe[:, :global_heads, prefix:] = reference.lepe(v[:, :global_heads, prefix:], size, weight, bias)
    if global_heads < num_heads:
        weight, bias = params["block_lepe.conv.weight"], params["block_lepe.conv.bias"]
        lepe[:, global_heads:, prefix:] = reference.lepe(v[:, global_heads:, prefix:], size, weight, bias, block)
    out = (out + lepe).transpose(1, 2).reshape(batch, tokens, channels)
    return out @ params["proj.weight"].T + params["proj.bias"]


def _reference_of(layer: ELFATTAttention, x: torch.Tensor, size: tuple[int, int], prefix: int) -> torch.Tensor:
    params = dict(layer.named_parameters())
    return reference_prefix_attention(
        params, x, size, prefix, layer.num_heads, layer.num_global_heads, layer.block_size(size)
    )


# ---------------------------------------------------------------------------------------------------------------
# ELFATTAttention

LAYER_CASES = [
    # dim, heads, grid, layer options
    (24, 3, (4, 5), dict(block=BlockCount(2, 2), split=1 / 3)),
    (32, 4, (5, 3), dict(block=(2, 2), qkv_bias=True)),
    (16, 2, (3, 6), dict(block=(None, 2), split=1.0)),
    (16, 2, (4, 4), dict(block=(2, None), split=0.0)),
]
LAYER_IDS = [f"C{c}-H{h}-{s[0]}x{s[1]}-" + "-".join(f"{k}{v}" for k, v in o.items()) for c, h, s, o in LAYER_CASES]


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "plain"])
@pytest.mark.parametrize("dim, heads, size, options", LAYER_CASES, ids=LAYER_IDS)
def test_no_prefix_tokens_is_elfatt_attention_exactly(dim, heads, size, options, fused, generator):
    layer = elfatt.ELFATTAttention(dim, heads, fused_attn=fused, **options)
    _randomise(layer, generator)
    prefix_layer = ELFATTAttention(dim, heads, fused_attn=fused, **options)
    prefix_layer.load_state_dict(layer.state_dict())
    assert prefix_layer.state_dict().keys() == layer.state_dict().keys()
    x = torch.randn(2, size[0] * size[1], dim, generator=generator)
    assert torch.equal(prefix_layer(x, size), layer(x, size))
    assert torch.equal(prefix_layer(x, size, num_prefix_tokens=0), layer(x, size))


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "plain"])
@pytest.mark.parametrize("dim, heads, size, options", LAYER_CASES, ids=LAYER_IDS)
def test_prefix_layer_matches_reference(dim, heads, size, options, fused, prefix, generator):
    layer = ELFATTAttention(dim, heads, fused_attn=fused, **options)
    _randomise(layer, generator)
    layer_ref = copy.deepcopy(layer).double()
    x = torch.randn(2, prefix + size[0] * size[1], dim, generator=generator, dtype=torch.float64)
    x_fast, x_ref = x.float().requires_grad_(), x.clone().requires_grad_()
    out = layer(x_fast, size, prefix)
    ref = _reference_of(layer_ref, x_ref, size, prefix)
    assert_close(out, ref, torch.float32)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.float())
    ref.backward(grad)
    assert_close(x_fast.grad, x_ref.grad, torch.float32, "input gradient")
    for (name, param), param_ref in zip(layer.named_parameters(), layer_ref.parameters(), strict=True):
        assert_close(param.grad, param_ref.grad, torch.float32, f"gradient of {name}")


def test_block_heads_keep_grid_tokens_in_their_block(generator):
    """A grid token's block-head output ignores the prefix tokens and the other blocks; a prefix token's does not."""
    layer = ELFATTAttention(16, 2, block=(2, 2), split=0.0)
    _randomise(layer, generator)
    size, prefix = (4, 4), 1
    x = torch.randn(1, prefix + 16, 16, generator=generator)
    changed = x.clone()
    # The class token, and the grid token at row 3, column 3 (block 3).
    changed[0, 0] += 1.0
    changed[0, prefix + 15] += 1.0
    out, out_changed = layer(x, size, prefix), layer(changed, size, prefix)
    block_0 = [prefix + r * 4 + c for r in range(2) for c in range(2)]
    torch.testing.assert_close(out_changed[0, block_0], out[0, block_0])
    assert not torch.allclose(out_changed[0, 0], out[0, 0])


def test_prefix_layer_bad_arguments(generator):
    layer = ELFATTAttention(16, 2)
    x = torch.randn(1, 1 + 12, 16, generator=generator)
    with pytest.raises(ValueError, match="make 14 tokens, which does not match the 13"):
        layer(x, (3, 4), 2)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        layer(x, (3, 4), -1)
    with pytest.raises(ValueError, match=r"\[B, N, C=16\]"):
        layer(x[0], (3, 4), 1)


# ---------------------------------------------------------------------------------------------------------------
# VisionTransformerELFATT


def _small(name: str = "vit_elfatt_tiny_patch16_224", **kwargs) -> nn.Module:
    return models.create_model(name, **{**SMALL, **kwargs}).eval()


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("batch", [1, 2])
def test_forward_shapes(batch, size, generator):
    model = _small(reg_tokens=1)
    x = torch.randn(batch, 3, *size, generator=generator)
    features = model.forward_features(x)
    assert features.shape == (batch, 2 + (size[0] // 16) * (size[1] // 16), 24)
    logits = model(x)
    assert logits.shape == (batch, 7) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.forward_head(features))


def test_batch_items_are_independent(generator):
    model = _small()
    x = torch.randn(2, 3, 64, 48, generator=generator)
    torch.testing.assert_close(model(x)[1:], model(x[1:]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(reg_tokens=2, no_embed_class=True, global_pool="avg")])
def test_backward_reaches_every_parameter(options, generator):
    model = _small(drop_path_rate=0.1, **options).train()
    x = torch.randn(2, 3, 80, 48, generator=generator, requires_grad=True)
    model(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


def test_blocks_match_the_prefix_reference(generator):
    """One block's attention inside the model, on a non-square grid, against the float64 reference."""
    model = _small(reg_tokens=1)
    x = torch.randn(2, 3, 80, 48, generator=generator)
    tokens, size = model._embed(x)
    assert size == (5, 3)
    layer = model.blocks[0].attn
    normed = model.blocks[0].norm1(tokens)
    assert_close(layer(normed, size, 2), _reference_of(layer, normed, size, 2), torch.float32)


def test_fused_and_plain_attention_agree(generator):
    model = _small(reg_tokens=1)
    x = torch.randn(2, 3, 80, 48, generator=generator)
    fused = model(x)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    torch.testing.assert_close(model(x), fused, rtol=1e-4, atol=1e-5)


def test_heads_split_and_blocks():
    tiny, base = _small(), _small("vit_elfatt_base_patch16_224", num_heads=4)
    assert [(b.attn.num_global_heads, b.attn.num_heads) for b in tiny.blocks] == [(1, 3)] * 2
    assert base.blocks[0].attn.num_global_heads == 2
    # Four windows: 7x7 at 224, growing with the input; a fixed block size instead.
    assert tiny.blocks[0].attn.block_size((14, 14)) == (7, 7)
    assert tiny.blocks[0].attn.block_size((24, 24)) == (12, 12)
    fixed = _small(block=(7, None))
    assert fixed.blocks[0].attn.block_size((24, 24)) == (7, 24)


def test_forward_intermediates(generator):
    model = _small(depth=3, reg_tokens=1)
    x = torch.randn(2, 3, 80, 48, generator=generator)
    final, maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 24, 5, 3)] * 3
    assert [info["reduction"] for info in model.feature_info] == [16] * 3
    torch.testing.assert_close(final, model.forward_features(x))
    # The grid tokens of the last block, without the two prefix tokens, normalised.
    last = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(last[0], final[:, 2:].reshape(2, 5, 3, 24).permute(0, 3, 1, 2))
    pairs = model.forward_intermediates(x, indices=[0], return_prefix_tokens=True, output_fmt="NLC")[1]
    grid, prefix = pairs[0]
    assert grid.shape == (2, 15, 24) and prefix.shape == (2, 2, 24)
    torch.testing.assert_close(grid.transpose(1, 2).reshape(2, 24, 5, 3), maps[0])
    nhwc = model.forward_intermediates(x, indices=[-2], output_fmt="NHWC", intermediates_only=True)
    torch.testing.assert_close(nhwc[0], maps[1].permute(0, 2, 3, 1))
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], maps[1])
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[3])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCL")


def test_features_only(generator):
    backbone = models.create_model("vit_elfatt_tiny_patch16_224", **{**SMALL, "depth": 4}, features_only=True)
    backbone.eval()
    x = torch.randn(2, 3, 64, 48, generator=generator)
    maps = backbone(x)
    # timm's ViT default: the last three blocks.
    assert backbone.feature_info.module_name() == ["blocks.1", "blocks.2", "blocks.3"]
    assert backbone.feature_info.channels() == [24] * 3 and backbone.feature_info.reduction() == [16] * 3
    assert [tuple(m.shape) for m in maps] == [(2, 24, 4, 3)] * 3
    chosen = models.create_model("vit_elfatt_tiny_patch16_224", **SMALL, features_only=True, out_indices=(0,))
    assert len(chosen.model.blocks) == 1 and isinstance(chosen.model.head, nn.Identity)
    assert not any(k.startswith(("head", "norm")) for k in chosen.model.state_dict())


def test_forward_head_and_reset_classifier(generator):
    model = _small(global_pool="token", reg_tokens=1)
    x = torch.randn(2, 3, 64, 48, generator=generator)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features[:, 0])
    assert model.get_classifier() is model.head
    model.reset_classifier(5, global_pool="avg")
    assert model.num_classes == 5 and model(x).shape == (2, 5)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 2:].mean(dim=1))
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), features[:, 2:].mean(dim=1))
    model.reset_classifier(3, global_pool="")
    assert model(x).shape == (2, features.shape[1], 3)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")
    with pytest.raises(ValueError, match="class token"):
        _small(class_token=False, global_pool="avg").reset_classifier(3, global_pool="token")


def test_grad_checkpointing_matches(generator):
    model = _small(reg_tokens=1).train()
    x = torch.randn(2, 3, 80, 48, generator=generator)
    out = model(x)
    out.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_checkpointed = model(x)
    out_checkpointed.square().mean().backward()
    torch.testing.assert_close(out_checkpointed, out)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], msg=lambda m, k=k: f"{k}: {m}")


def test_position_embedding_resizing(generator):
    pos_embed = torch.randn(1, 1 + 4 * 3, 8, generator=generator)
    resized = resample_abs_pos_embed(pos_embed, (6, 5), (4, 3), num_prefix_tokens=1)
    assert resized.shape == (1, 1 + 30, 8)
    torch.testing.assert_close(resized[:, :1], pos_embed[:, :1])
    grid = pos_embed[:, 1:].reshape(1, 4, 3, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 5), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 30, 8))
    assert resample_abs_pos_embed(pos_embed, (4, 3), (4, 3)) is pos_embed

    model = _small(img_size=64)
    x = torch.randn(1, 3, 96, 48, generator=generator)
    before = model(x)
    model.set_input_size((96, 48))
    assert model.img_size == (96, 48) and model.pos_embed.shape == (1, 1 + 6 * 3, 24)
    torch.testing.assert_close(model(x), before)
    model.set_input_size(block=(3, 3))
    assert model.blocks[0].attn.block_size((6, 3)) == (3, 3)
    with pytest.warns(DeprecationWarning, match="num_blocks= is deprecated"):
        model.set_input_size(num_blocks=2)
    assert model.blocks[0].attn.block == BlockCount(2, 2)
    with pytest.raises(ValueError, match="give only block="):
        model.set_input_size(num_blocks=2, block_size=2)


def test_checkpoint_filter_fills_lepe_and_resizes_pos_embed(generator):
    source = _small(img_size=32)
    _randomise(source, generator)
    timm_like = {k: v for k, v in source.state_dict().items() if "_lepe." not in k}
    model = _small(img_size=48)
    model.load_state_dict(checkpoint_filter_fn({"model": timm_like}, model))
    assert all(p.abs().sum() == 0 for k, p in model.named_parameters() if "_lepe." in k)
    assert torch.equal(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    # Resized from the 2x2 grid as the forward pass resizes it on the fly.
    torch.testing.assert_close(model.pos_embed, resample_abs_pos_embed(source.pos_embed, (3, 3), (2, 2)))


def test_bad_arguments_raise_clear_errors(generator):
    model = _small()
    with pytest.raises(ValueError, match="multiples of the patch 16x16"):
        model(torch.randn(1, 3, 64, 40, generator=generator))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 4, 64, 64, generator=generator))
    with pytest.raises(ValueError, match="class_token"):
        VisionTransformerELFATT(**SMALL, class_token=False)
    with pytest.raises(ValueError, match="give only block="):
        VisionTransformerELFATT(**SMALL, num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="whole number"):
        VisionTransformerELFATT(**SMALL, split=0.5)


# Parameters of DeiT-Ti / S / B (timm's deit_*_patch16_224), and the LePE convs ELFATT adds: one depthwise 3x3 conv
# with bias over all C channels (split between the two head groups) per block, 12 * (9 + 1) * C.
DEIT_PARAMS = {192: 5_717_416, 384: 22_050_664, 768: 86_567_656}


def _deit_params(channels: int, depth: int = 12, classes: int = 1000, patch: int = 16, tokens: int = 197) -> int:
    """ViT parameters from the layout: patch conv, class token, position embedding, blocks, norm, head."""
    block = 2 * channels + (3 * channels**2 + 3 * channels) + (channels**2 + channels) + 2 * channels
    block += (4 * channels**2 + 4 * channels) + (4 * channels**2 + channels)
    embed = 3 * patch * patch * channels + channels + channels + tokens * channels
    return embed + depth * block + 2 * channels + channels * classes + classes


@pytest.mark.parametrize("name, channels", list(zip(VARIANTS, (192, 384, 768), strict=True)))
def test_parameters_of_the_variants(name, channels, meta_device):  # noqa: F811
    model = models.create_model(name)
    assert next(model.parameters()).device.type == "meta"
    assert _deit_params(channels) == DEIT_PARAMS[channels]
    lepe = 12 * (9 + 1) * channels
    assert sum(p.numel() for p in model.parameters()) == DEIT_PARAMS[channels] + lepe
    assert sum(p.numel() for k, p in model.named_parameters() if "_lepe." in k) == lepe


@pytest.mark.parametrize("name", VARIANTS)
def test_default_cfg(name, meta_device):  # noqa: F811
    model = models.create_model(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name and models.is_model(name)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert model.img_size == (224, 224) and model.patch_embed.patch_size == (16, 16)
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]).out_features == cfg["num_classes"] == model.num_classes == 1000
    assert model.num_features == model.feature_info[-1]["num_chs"] and len(model.feature_info) == 12
    assert model.global_pool == "token" and model.num_prefix_tokens == 1
    assert model.no_weight_decay() >= {"pos_embed", "cls_token"}


# ---------------------------------------------------------------------------------------------------------------
# patch_timm_vit on a stand-in with timm's VisionTransformer structure


class StandInPatchEmbed(nn.Module):
    """timm's PatchEmbed as ``dynamic_img_size=True`` uses it (NHWC out), without ``dynamic_feat_size``."""

    def __init__(self, img_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.dynamic_img_pad = False
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class StandInAttention(nn.Module):
    """timm's Attention: fused qkv, q_norm / k_norm, SDPA, proj."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.fused_attn = True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=attn_mask)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(batch, tokens, channels))))


class StandInBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = StandInAttention(dim, num_heads, qk_norm)
        self.ls1 = self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask)))
        return x + self.mlp(self.norm2(x))


class StandInViT(nn.Module):
    """timm's VisionTransformer with ``dynamic_img_size=True``: class and register tokens, resized pos_embed."""

    def __init__(self, img_size=32, patch_size=8, dim=24, depth=2, num_heads=3, reg_tokens=1, qk_norm=False) -> None:
        super().__init__()
        self.patch_embed = StandInPatchEmbed(img_size, patch_size, dim)
        self.num_prefix_tokens = 1 + reg_tokens
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.reg_token = nn.Parameter(torch.randn(1, reg_tokens, dim) * 0.02) if reg_tokens else None
        grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_prefix_tokens + grid[0] * grid[1], dim) * 0.02)
        self.patch_drop = nn.Identity()
        self.blocks = nn.Sequential(*[StandInBlock(dim, num_heads, qk_norm) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        batch, height, width, channels = x.shape
        pos_embed = resample_abs_pos_embed(
            self.pos_embed, (height, width), self.patch_embed.grid_size, self.num_prefix_tokens
        )
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = torch.cat(prefix + [x.reshape(batch, -1, channels)], dim=1) + pos_embed
        return self.norm(self.blocks(self.patch_drop(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


class ReferenceAttention(nn.Module):
    """In the float64 copy of the stand-in: ELFATT from the equations, with the original qkv / proj weights."""

    def __init__(self, attn: StandInAttention, patched: TimmELFATTAttention, size, prefix) -> None:
        super().__init__()
        self.params = {name: p.detach().double() for name, p in attn.named_parameters()}
        for name in ("global_lepe", "block_lepe"):
            conv = getattr(patched, name).conv
            self.params[f"{name}.conv.weight"] = conv.weight.detach().double()
            self.params[f"{name}.conv.bias"] = conv.bias.detach().double()
        self.heads, self.global_heads = patched.num_heads, patched.num_global_heads
        self.size, self.prefix, self.block = size, prefix, patched.block_size(size)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        args = (self.size, self.prefix, self.heads, self.global_heads, self.block)
        return reference_prefix_attention(self.params, x, *args)


def _stand_in(generator: torch.Generator, **kwargs) -> StandInViT:
    model = StandInViT(**kwargs).eval()
    _randomise(model, generator)
    return model


def _reference_model(original: StandInViT, patched: StandInViT, image_size) -> StandInViT:
    size = (image_size[0] // 8, image_size[1] // 8)
    reference_model = copy.deepcopy(original).double()
    for ref_block, block in zip(reference_model.blocks, patched.blocks, strict=True):
        ref_block.attn = ReferenceAttention(ref_block.attn, block.attn, size, original.num_prefix_tokens)
    return reference_model


@pytest.mark.parametrize("image_size", [(32, 32), (40, 24)], ids=["32x32", "40x24"])
@pytest.mark.parametrize("reg_tokens", [0, 1])
def test_patched_vit_matches_the_reference(reg_tokens, image_size, generator):
    original = _stand_in(generator, reg_tokens=reg_tokens)
    model = patch_timm_vit(copy.deepcopy(original))
    for block, original_block in zip(model.blocks, original.blocks, strict=True):
        assert isinstance(block.attn, TimmELFATTAttention)
        assert torch.equal(block.attn.qkv.weight, original_block.attn.qkv.weight)
        assert torch.equal(block.attn.qkv.bias, original_block.attn.qkv.bias)
        assert torch.equal(block.attn.proj.weight, original_block.attn.proj.weight)
        assert all(p.abs().sum() == 0 for k, p in block.attn.named_parameters() if "_lepe." in k)
        assert (block.attn.num_global_heads, block.attn.num_heads) == (1, 3)
    x = torch.randn(2, 3, *image_size, generator=generator, dtype=torch.float64)
    out = model(x.float())
    assert out.shape == (2, 5)
    assert_close(out, _reference_model(original, model, image_size)(x), torch.float32)
    # forward_features alone learns the grid too (the hook is on patch_embed).
    torch.testing.assert_close(model.head(model.forward_features(x.float())[:, 0]), out)

    # LePE that is no longer zero, as after fine-tuning: added on the grid tokens only.
    for block in model.blocks:
        _randomise(block.attn.global_lepe, generator)
        _randomise(block.attn.block_lepe, generator)
    assert_close(model(x.float()), _reference_model(original, model, image_size)(x), torch.float32)


def test_patched_vit_trains(generator):
    model = patch_timm_vit(_stand_in(generator)).train()
    x = torch.randn(2, 3, 40, 24, generator=generator, requires_grad=True)
    model(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # The zero LePE convs get a gradient, so fine-tuning moves them.
    assert model.blocks[0].attn.global_lepe.conv.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.block_lepe.conv.weight.grad.abs().sum() > 0


def test_patching_keeps_modules_and_state_dict_names(generator):
    original = _stand_in(generator, qk_norm=True)
    qkv, q_norm = original.blocks[0].attn.qkv, original.blocks[0].attn.q_norm
    keys = set(original.state_dict())
    model = patch_timm_vit(original)
    assert model is original
    attn = model.blocks[0].attn
    assert attn.qkv is qkv and attn.q_norm is q_norm and isinstance(attn.k_norm, nn.LayerNorm)
    added = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict())
    assert added == {
        f"blocks.{i}.attn.{p}_lepe.conv.{w}" for i in range(2) for p in ("global", "block") for w in ("weight", "bias")
    }
    assert model(torch.randn(1, 3, 32, 24, generator=generator)).shape == (1, 5)


def test_double_patch_is_a_no_op(generator):
    model = patch_timm_vit(_stand_in(generator))
    layers = [block.attn for block in model.blocks]
    x = torch.randn(1, 3, 32, 32, generator=generator)
    out = model(x)
    assert patch_timm_vit(model, block=(1, 1)) is model
    assert [block.attn for block in model.blocks] == layers
    assert len(model.patch_embed._forward_pre_hooks) == 1
    assert torch.equal(model(x), out)


def test_patch_options_and_deepcopy(generator):
    model = patch_timm_vit(_stand_in(generator, num_heads=4), block=(2, None), split=0.25)
    attn = model.blocks[1].attn
    assert attn.num_global_heads == 1 and attn.block_size((5, 3)) == (2, 3)
    # An EMA copy gets its own grid, shared by its own hook and layers.
    twin = copy.deepcopy(model)
    grid = twin.blocks[0].attn.token_grid
    assert grid is not attn.token_grid and grid is twin.blocks[1].attn.token_grid
    assert list(twin.patch_embed._forward_pre_hooks.values()) == [grid]
    x = torch.randn(1, 3, 40, 24, generator=generator)
    torch.testing.assert_close(twin(x), model(x))
    twin(torch.randn(1, 3, 16, 16, generator=generator))
    assert grid.size == (2, 2) and attn.token_grid.size == (5, 3)


def test_patch_errors(generator):
    model = patch_timm_vit(_stand_in(generator))
    tokens = torch.randn(1, 2 + 16, 24, generator=generator)
    model(torch.randn(1, 3, 32, 32, generator=generator))
    with pytest.raises(ValueError, match="no attention mask"):
        model.blocks[0].attn(tokens, attn_mask=torch.zeros(18, 18, dtype=torch.bool))
    with pytest.raises(ValueError, match="no attention mask"):
        model.blocks[0](tokens, attn_mask=torch.ones(18, 18, dtype=torch.bool))
    with pytest.raises(ValueError, match="4x4 patch grid and 2 prefix tokens make 18 tokens"):
        model.blocks[0].attn(tokens[:, :-1])
    unrun = patch_timm_vit(_stand_in(generator))
    with pytest.raises(ValueError, match="token grid is unknown"):
        unrun.blocks[0].attn(tokens)

    scaled = _stand_in(generator)
    scaled.blocks[1].attn.norm = nn.LayerNorm(24)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn has an attention output norm"):
        patch_timm_vit(scaled)
    # Nothing was swapped in: the model is left as it was.
    assert isinstance(scaled.blocks[0].attn, StandInAttention) and not scaled.patch_embed._forward_pre_hooks
    no_qkv = _stand_in(generator)
    del no_qkv.blocks[0].attn.qkv
    with pytest.raises(ValueError, match="has no 'qkv'"):
        patch_timm_vit(no_qkv)
    with pytest.raises(ValueError, match="no 'patch_embed'"):
        patch_timm_vit(nn.Module())
    with pytest.raises(ValueError, match="give only block="):
        patch_timm_vit(_stand_in(generator), block=2, num_blocks=2)
    with pytest.raises(ValueError, match="already a VisionTransformerELFATT"):
        patch_timm_vit(_small())


def test_patch_timm_vit_is_a_lazy_export():
    assert elfatt.patch_timm_vit is patch_timm_vit and "patch_timm_vit" in elfatt.__all__
    code = "import sys, elfatt; assert 'elfatt.models' not in sys.modules; elfatt.patch_timm_vit; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    with pytest.raises(AttributeError, match="no attribute 'patch_timm_vt'"):
        elfatt.patch_timm_vt  # noqa: B018


def test_patch_real_timm_vit(generator):
    """A patched timm ViT computes what a ViT-ELFATT given its state dict computes."""
    import timm

    options = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5, reg_tokens=1)
    vit = timm.models.VisionTransformer(**options, dynamic_img_size=True).eval()
    _randomise(vit, generator)
    qkv = vit.blocks[0].attn.qkv.weight.detach().clone()
    patch_timm_vit(vit)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, qkv)
    ours = VisionTransformerELFATT(**options).eval()
    ours.load_state_dict(vit.state_dict())
    for image_size in ((32, 32), (40, 24)):
        x = torch.randn(2, 3, *image_size, generator=generator)
        torch.testing.assert_close(vit(x), ours(x))
        final, maps = vit.forward_intermediates(x, indices=[1])
        torch.testing.assert_close(maps[0], ours.forward_intermediates(x, indices=[1])[1][0])
    assert timm.create_model("vit_elfatt_tiny_patch16_224", **SMALL)(torch.randn(1, 3, 48, 32)).shape == (1, 7)
    with pytest.raises(ValueError, match="no attention mask"):
        vit.forward_features(torch.randn(1, 3, 32, 32), attn_mask=torch.ones(1, 1, 18, 18, dtype=torch.bool))
