"""The patch on diffusion transformers whose image tokens attend among themselves (PixArt, DiT), built small as
diffusers' own tests build them; joint text+image attention (SD3, FLUX) refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel
from unets import record_op_calls

import elfatt.diffusion as diffusion

PIXART = dict(
    sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
    in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
)  # fmt: skip
DIT = dict(
    sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=4, in_channels=4,
    out_channels=8, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
)  # fmt: skip


def _pixart(dtype: torch.dtype = torch.float32) -> PixArtTransformer2DModel:
    torch.manual_seed(0)
    return PixArtTransformer2DModel(**PIXART).eval().to(dtype)


def _dit(dtype: torch.dtype = torch.float32) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    return DiTTransformer2DModel(**DIT).eval().to(dtype)


def _text(batch: int, tokens: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, tokens, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _pixart_call(
    model: torch.nn.Module, latent: torch.Tensor, text_tokens: int = 5, text: torch.Tensor | None = None
) -> torch.Tensor:
    text = _text(latent.shape[0], text_tokens, latent.dtype) if text is None else text
    timestep = torch.full((latent.shape[0],), 15)  # one step for the batch, so a batch equals its halves
    extra = {"resolution": None, "aspect_ratio": None}
    with torch.no_grad():
        return model(latent, encoder_hidden_states=text, timestep=timestep, added_cond_kwargs=extra).sample


def _dit_call(model: torch.nn.Module, latent: torch.Tensor) -> torch.Tensor:
    timestep = torch.arange(latent.shape[0]) * 10 + 5
    labels = torch.arange(latent.shape[0]) % 10
    with torch.no_grad():
        return model(latent, timestep=timestep, class_labels=labels).sample


def _latent(batch: int, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(0), dtype=dtype)


# DiT's own unpatchify takes square latents only (it fails there unpatched too)
@pytest.mark.parametrize(
    "build, call, latent_side",
    [(_pixart, _pixart_call, (8, 12)), (_pixart, _pixart_call, (10, 6)), (_dit, _dit_call, (8, 8))],
    ids=["pixart-8x12", "pixart-10x6", "dit-8x8"],
)
def test_no_global_heads_and_one_block_over_the_grid_is_the_original_attention(build, call, latent_side, monkeypatch):
    model = build(torch.float64)
    latent = _latent(2, *latent_side, dtype=torch.float64)
    original = call(model, latent)
    grids = record_op_calls(monkeypatch, "block")
    diffusion.apply_patch(model, ratio=0.0, split=0.0, block=64)
    patched = call(model, latent)
    # the patch ran (on the token grid: the latent over the patch size), and changed nothing
    assert grids and set(grids) == {(latent_side[0] // 2, latent_side[1] // 2)}
    torch.testing.assert_close(patched, original, rtol=1e-10, atol=1e-10)


def test_elfatt_settings_change_the_output_and_remove_patch_restores_it():
    model = _pixart()
    latent = _latent(2, 8, 12)
    originals = dict(model.attn_processors)
    original = _pixart_call(model, latent)
    diffusion.apply_patch(model, ratio=0.5, split=0.5, block=2)
    assert diffusion.is_patched(model)
    patched = _pixart_call(model, latent)
    assert torch.isfinite(patched).all() and not torch.allclose(patched, original, atol=1e-4)
    diffusion.remove_patch(model)
    assert not diffusion.is_patched(model)
    assert all(model.attn_processors[name] is processor for name, processor in originals.items())
    assert torch.equal(_pixart_call(model, latent), original)


def test_a_guidance_doubled_batch_equals_its_halves():
    model = _pixart(torch.float64)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    latent, text = _latent(4, 8, 10, dtype=torch.float64), _text(4, dtype=torch.float64)
    whole = _pixart_call(model, latent, text=text)
    halves = torch.cat([_pixart_call(model, latent[:2], text=text[:2]), _pixart_call(model, latent[2:], text=text[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-10, atol=1e-10)


def test_text_length_changes_and_a_deep_copy():
    model = _pixart()
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    latent = _latent(1, 8, 8)
    assert _pixart_call(model, latent, text_tokens=3).shape == _pixart_call(model, latent, text_tokens=9).shape
    twin = copy.deepcopy(model)
    assert diffusion.is_patched(twin)
    torch.testing.assert_close(_pixart_call(twin, latent), _pixart_call(model, latent))


def test_joint_text_and_image_attention_is_refused_in_one_line():
    torch.manual_seed(0)
    sd3 = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=8, out_channels=4,
    )  # fmt: skip
    with pytest.raises(TypeError, match="jointly .*JointAttnProcessor2_0.* does not compute yet"):
        diffusion.apply_patch(sd3)
    assert not hasattr(sd3, "_elfatt_patch")
