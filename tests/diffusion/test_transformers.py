"""The patch on diffusion transformers, built small as diffusers' own tests build them: image tokens attending among
themselves (PixArt, DiT) and SD3's joint text+image attention; FLUX refused in one line."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel
from unets import record_op_calls

import elfatt.diffusion as diffusion
from elfatt.diffusion.joint import FluxELFATTProcessor, JointELFATTProcessor, _blocks_with_text

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


SD3 = dict(
    sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
    caption_projection_dim=32, joint_attention_dim=16, pooled_projection_dim=8, out_channels=4, qk_norm="rms_norm",
)  # fmt: skip


def _sd3(dtype: torch.dtype = torch.float32) -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(**SD3).eval().to(dtype)


def _sd3_call(model: torch.nn.Module, latent: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
    batch = latent.shape[0]
    generator = torch.Generator().manual_seed(2)
    text = torch.randn(batch, 7, 16, generator=generator, dtype=latent.dtype) if text is None else text
    pooled = torch.ones(batch, 8, dtype=latent.dtype)
    with torch.no_grad():
        return model(
            latent, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.full((batch,), 10)
        ).sample


def _masked_reference(q, k, v, text_kv, grid, block, scale):
    """Each image query's exact attention to the image keys of its block and every text key, as one masked
    attention over all keys; float64, written from the definition."""
    (height, width), (bh, bw) = grid, block
    rows = torch.arange(height * width) // width
    cols = torch.arange(height * width) % width
    same_block = ((rows[:, None] // bh) == (rows[None] // bh)) & ((cols[:, None] // bw) == (cols[None] // bw))
    keys, values, allowed = k, v, same_block
    if text_kv is not None:
        keys, values = torch.cat([k, text_kv[0]], 1), torch.cat([v, text_kv[1]], 1)
        allowed = torch.cat([same_block, torch.ones(height * width, text_kv[0].shape[1], dtype=torch.bool)], 1)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, keys) * scale
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhnm,bmhd->bnhd", weights, values)


@pytest.mark.parametrize("with_text", [True, False], ids=["text", "no-text"])
@pytest.mark.parametrize("grid, block", [((5, 7), (2, 3)), ((4, 6), (2, 3)), ((3, 5), (8, 8))], ids=str)
def test_blocks_with_text_match_the_masked_reference_forward_and_backward(grid, block, with_text):
    generator = torch.Generator().manual_seed(0)
    shape = (2, grid[0] * grid[1], 3, 4)
    q, k, v = (torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(3))
    text = None
    if with_text:
        text = tuple(
            torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True) for _ in "kv"
        )
    clipped = (min(block[0], grid[0]), min(block[1], grid[1]))
    out = _blocks_with_text(q, k, v, text, grid, clipped, 0.5)
    expected = _masked_reference(q, k, v, text, grid, clipped, 0.5)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    inputs = (q, k, v, *(text or ()))
    cotangent = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, cotangent)
    want = torch.autograd.grad(expected, inputs, cotangent)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sd3_guidance_batch_text_length_deep_copy_and_removal():
    model = _sd3(torch.float64)
    originals = dict(model.attn_processors)
    latent = _latent(4, 8, 10, dtype=torch.float64)
    text = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    original = _sd3_call(model, latent, text)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    whole = _sd3_call(model, latent, text)
    halves = torch.cat([_sd3_call(model, latent[:2], text[:2]), _sd3_call(model, latent[2:], text[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-10, atol=1e-10)
    longer = torch.randn(4, 11, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert _sd3_call(model, latent, longer).shape == whole.shape
    twin = copy.deepcopy(model)
    torch.testing.assert_close(_sd3_call(twin, latent, text), whole)
    diffusion.remove_patch(model)
    assert all(model.attn_processors[name] is processor for name, processor in originals.items())
    assert torch.equal(_sd3_call(model, latent, text), original)


FLUX = dict(
    patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
)  # fmt: skip


def _flux(dtype: torch.dtype = torch.float32) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(**FLUX).eval().to(dtype)


def _flux_call(model: torch.nn.Module, latent: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
    """FLUX's own packing: the latent's tokens row-major, their (0, row, column) ids, text ids all zero."""
    batch, channels, height, width = latent.shape
    tokens = latent.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(latent.dtype)
    text = (
        torch.randn(batch, 6, 32, generator=torch.Generator().manual_seed(5), dtype=latent.dtype)
        if text is None
        else text
    )
    text_ids = torch.zeros(text.shape[1], 3, dtype=latent.dtype)
    pooled = torch.ones(batch, 32, dtype=latent.dtype)
    with torch.no_grad():
        return model(
            tokens, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.full((batch,), 0.5),
            img_ids=image_ids, txt_ids=text_ids,
        ).sample  # fmt: skip


@pytest.mark.parametrize(
    "build, call, processor, latent_side",
    [
        (_sd3, _sd3_call, JointELFATTProcessor, (8, 12)),
        (_sd3, _sd3_call, JointELFATTProcessor, (10, 6)),
        (_flux, _flux_call, FluxELFATTProcessor, (4, 6)),
        (_flux, _flux_call, FluxELFATTProcessor, (5, 3)),
    ],
    ids=["sd3-8x12", "sd3-10x6", "flux-4x6", "flux-5x3"],
)
def test_joint_attention_reduces_to_the_original_with_no_global_heads_and_one_block(
    build, call, processor, latent_side
):
    model = build(torch.float64)
    latent = _latent(2, *latent_side, dtype=torch.float64)
    original = call(model, latent)
    diffusion.apply_patch(model, ratio=0.0, split=0.0, block=64)
    assert all(type(p) is processor for p in model.attn_processors.values())
    torch.testing.assert_close(call(model, latent), original, rtol=1e-10, atol=1e-10)
    # smaller blocks, and global heads: something else, still finite
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=(3, 2))
    changed = call(model, latent)
    assert torch.isfinite(changed).all() and not torch.allclose(changed, original, atol=1e-6)
    diffusion.remove_patch(model)
    assert torch.equal(call(model, latent), original)


def test_flux_guidance_batch_and_deep_copy():
    model = _flux(torch.float64)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    latent = _latent(4, 4, 6, dtype=torch.float64)
    text = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    whole = _flux_call(model, latent, text)
    halves = torch.cat([_flux_call(model, latent[:2], text[:2]), _flux_call(model, latent[2:], text[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_flux_call(copy.deepcopy(model), latent, text), whole)


def test_flux_patch_runs_in_every_block(monkeypatch):
    import elfatt.diffusion.joint as joint

    calls = []
    real = joint._blocks_with_text
    monkeypatch.setattr(joint, "_blocks_with_text", lambda *a: calls.append(a[4]) or real(*a))
    model = _flux()
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    _flux_call(model, _latent(1, 4, 6))
    assert calls == [(4, 6), (4, 6)], "one double-stream and one single-stream block, on the 4x6 grid"


@pytest.mark.parametrize("build, call", [(_pixart, _pixart_call), (_sd3, _sd3_call)], ids=["pixart", "sd3"])
def test_a_patched_transformer_compiles_and_matches_eager(build, call):
    model = build()
    latent = _latent(2, 8, 12)
    original = call(model, latent)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    eager = call(model, latent)
    assert not torch.allclose(eager, original, atol=1e-5), "the patch must change the output for this test to mean"
    # AOT autograd's eager backend: Dynamo's capture of the patched processors, without Inductor's compile time
    compiled = call(torch.compile(model, backend="aot_eager"), latent)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(os.environ.get("ELFATT_SLOW_TESTS") != "1", reason="ELFATT_SLOW_TESTS=1: Inductor, ~1 minute")
@pytest.mark.parametrize(
    "build, call", [(_pixart, _pixart_call), (_sd3, _sd3_call), (_flux, _flux_call)], ids=["pixart", "sd3", "flux"]
)
def test_a_patched_transformer_compiles_with_inductor_and_matches_eager(build, call):
    model = build()
    latent = _latent(2, 8, 12) if build is not _flux else _latent(1, 8, 12)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    eager = call(model, latent)
    compiled = call(torch.compile(model), latent)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_sd3_global_heads_are_linear_attention_of_the_image_queries_over_text_and_image_keys():
    """All heads global: each image query gets softmax over channels of q, times softmax over all P + N tokens of
    k, transposed, times v (written from ELFATT's equation, float64)."""
    from elfatt.diffusion.processor import PatchConfig, PatchState

    generator = torch.Generator().manual_seed(0)
    grid, prefix = (3, 5), 4
    q, k, v = (torch.randn(2, 15, 2, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    text = tuple(torch.randn(2, prefix, 2, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    processor = JointELFATTProcessor(PatchState(PatchConfig(split=1.0, ratio=0.0)), original=None)
    joined = [torch.cat(pair, 1) for pair in zip(text, (q, k, v), strict=True)]
    _, out = processor._joint_attention(8**-0.5, *joined, prefix, grid)
    keys, values = torch.cat([text[1], k], 1), torch.cat([text[2], v], 1)
    context = torch.einsum("bmhc,bmhd->bhcd", keys.softmax(dim=1), values)
    expected = torch.einsum("bnhc,bhcd->bnhd", q.softmax(dim=-1), context)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_joint_processors_it_does_not_compute_are_refused_in_one_line():
    class FluxIPAdapterAttnProcessor:  # FLUX's IP-Adapter processor, by name: its image prompt is not covered
        def __call__(self, *args, **kwargs):
            raise AssertionError("not called")

    model = _pixart()
    model.transformer_blocks[0].attn1.set_processor(FluxIPAdapterAttnProcessor())
    with pytest.raises(TypeError, match="jointly .*FluxIPAdapterAttnProcessor.* does not compute yet"):
        diffusion.apply_patch(model)
    assert not hasattr(model, "_elfatt_patch")


def test_exact_blocks_leave_the_first_and_last_transformer_blocks_to_their_original_attention(monkeypatch):
    import elfatt.diffusion.joint as joint

    calls = []
    real = joint._blocks_with_text
    monkeypatch.setattr(joint, "_blocks_with_text", lambda *a: calls.append(a[4]) or real(*a))
    model = _flux()
    latent = _latent(1, 4, 6)
    original_processors = dict(model.attn_processors)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2, exact_blocks=(1, 0))
    _flux_call(model, latent)
    assert calls == [(4, 6)], "the double-stream block kept its attention, the single-stream one ran ELFATT"
    kept = model.attn_processors
    assert kept["transformer_blocks.0.attn.processor"] is original_processors["transformer_blocks.0.attn.processor"]
    assert diffusion.is_patched(model) and diffusion.patch_config(model).exact_blocks == (1, 0)
    diffusion.remove_patch(model)
    assert all(kept is original_processors[name] for name, kept in model.attn_processors.items())

    pixart = _pixart(torch.float64)
    latent = _latent(2, 8, 12, dtype=torch.float64)
    original = _pixart_call(pixart, latent)
    diffusion.apply_patch(pixart, ratio=0.0, split=0.5, block=2)
    changed = _pixart_call(pixart, latent)
    with pytest.raises(ValueError, match=r"exact_blocks=\(1, 1\) leaves none of the 2 transformer blocks"):
        diffusion.apply_patch(pixart, exact_blocks=(1, 1))
    diffusion.apply_patch(pixart, ratio=0.0, split=0.5, block=2, exact_blocks=(0, 1))
    half = _pixart_call(pixart, latent)
    assert not torch.allclose(half, original) and not torch.allclose(half, changed)


@pytest.mark.parametrize("exact_blocks", [3, (1,), (1, -1), (0.5, 0)])
def test_exact_blocks_must_be_a_pair_of_counts(exact_blocks):
    with pytest.raises(ValueError, match="exact_blocks must be a pair of counts"):
        diffusion.apply_patch(_pixart(), exact_blocks=exact_blocks)


def test_a_unet_has_no_transformer_blocks_to_leave_exact():
    from unets import TWO_LEVELS, build_unet

    with pytest.raises(ValueError, match=r"no stack of transformer blocks .*max_downsample"):
        diffusion.apply_patch(build_unet(TWO_LEVELS), exact_blocks=(1, 0))
