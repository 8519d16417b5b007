"""apply_patch / remove_patch on diffusers UNets: exact restore, reference match, skipping, fp16, a sampling loop."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from unets import TWO_LEVELS, build_unet, record_op_calls  # noqa: E402

import elfatt.diffusion.processor as processor_module  # noqa: E402
import elfatt.ops.reference as reference  # noqa: E402
from elfatt.diffusion import apply_patch, is_patched, patch_config, remove_patch  # noqa: E402

RTOL = {torch.float32: 1e-4, torch.float16: 2e-2}


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def _inputs(height: int, width: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(height * 31 + width)
    sample = torch.randn(2, 4, height, width, generator=generator).to(dtype)
    context = torch.randn(2, 7, 32, generator=generator).to(dtype)
    return sample, torch.tensor(500), context


@pytest.mark.parametrize("size", [(16, 16), (12, 20), (9, 7)])
def test_apply_then_remove_restores_bit_identical_outputs(size):
    unet = tiny_unet()
    sample, step, context = _inputs(*size)
    originals = dict(unet.attn_processors)
    with torch.no_grad():
        before = unet(sample, step, context).sample
        apply_patch(unet, min_tokens=1, block=4)
        assert is_patched(unet)
        patched = unet(sample, step, context).sample
        remove_patch(unet)
        after = unet(sample, step, context).sample
    assert not is_patched(unet)
    assert torch.equal(before, after)
    assert all(unet.attn_processors[name] is processor for name, processor in originals.items())
    assert torch.isfinite(patched).all() and not torch.equal(patched, before)


def test_layers_below_min_tokens_keep_their_attention(monkeypatch):
    unet = tiny_unet()
    sample, step, context = _inputs(16, 24)
    seen = record_op_calls(monkeypatch, "global")
    with torch.no_grad():
        before = unet(sample, step, context).sample
        apply_patch(unet, min_tokens=16 * 24 + 1)
        assert torch.equal(unet(sample, step, context).sample, before)
        assert seen == []
        apply_patch(unet, min_tokens=16 * 24, ratio=0.0)
        unet(sample, step, context)
    # Only the 16x24 level is patched: one down and two up self-attention layers (an up block has
    # layers_per_block + 1), on 384 tokens each; none of the 8x12 level.
    assert len(seen) == 3 and all(shape[1] == 16 * 24 for shape in seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("split", [0.5, 0.25, 1.0, 0.0])
def test_processor_matches_reference_without_merging(dtype, split):
    torch.manual_seed(1)
    attn = Attention(query_dim=64, heads=8, dim_head=8).eval()
    size = (6, 10)
    x = torch.randn(2, 60, 64)
    ref = _reference_attention(attn, x.double(), size, (4, 4), split)
    state = processor_module.PatchState(processor_module.PatchConfig(ratio=0.0, block=4, split=split, min_tokens=1))
    state.latent_size = size
    processor = processor_module.ELFATTAttnProcessor(state, original=None)
    with torch.no_grad():
        out = processor(attn.to(dtype), x.to(dtype))
    error = ((out.double() - ref).norm() / ref.norm()).item()
    assert error < RTOL[dtype], error


def _reference_attention(attn, x, size, block, split):
    """to_out(cat(global linear heads, block heads)) from the layer's weights, in float64."""
    weights = {name: p.detach().double() for name, p in attn.named_parameters()}
    heads = attn.heads
    q, k, v = (
        (x @ weights[f"to_{n}.weight"].T).reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for n in "qkv"
    )
    out = reference.elfatt(q, k, v, size, block, int(heads * split))
    out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return out @ weights["to_out.0.weight"].T + weights["to_out.0.bias"]


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_merge_only_is_exact_softmax_over_the_merged_tokens(ratio):
    """ToMe-SD's merge-only peer: merge, the layer's softmax attention over the merged tokens, unmerge, to_out."""
    torch.manual_seed(2)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    size = (6, 10)
    x = torch.randn(2, 60, 32)
    config = processor_module.PatchConfig(ratio=ratio, attention="merge-only", random_destinations=False)
    state = processor_module.PatchState(config)
    state.latent_size = size
    processor = processor_module.ELFATTAttnProcessor(state, original=None)
    with torch.no_grad():
        out = processor(attn, x)
    merge = processor_module.bipartite_soft_matching_2d(x, size, ratio, sx=2, sy=2, generator=None)
    weights = {name: p.detach().double() for name, p in attn.named_parameters()}
    merged = merge.merge(x.double())
    q, k, v = ((merged @ weights[f"to_{n}.weight"].T).unflatten(-1, (4, 8)).transpose(1, 2) for n in "qkv")
    scores = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    heads = merge.unmerge((scores @ v).transpose(1, 2).flatten(2))
    ref = heads @ weights["to_out.0.weight"].T + weights["to_out.0.bias"]
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    if ratio == 0.0:
        with torch.no_grad():
            assert torch.allclose(out, attn(x), rtol=1e-4, atol=1e-6)


def test_patched_unet_is_finite_in_float16():
    unet = tiny_unet().half()
    sample, step, context = _inputs(24, 16, torch.float16)
    apply_patch(unet, min_tokens=1, block=8, cross_attention=True)
    with torch.no_grad():
        out = unet(sample * 50, step, context).sample
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_sampling_loop_runs_end_to_end_through_a_pipeline_object():
    pipe = SimpleNamespace(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=1000))
    apply_patch(pipe, min_tokens=64, ratio=0.5, block=4, cross_attention=True)
    assert patch_config(pipe).cross_attention
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 12, 18, generator=generator)
    context = torch.randn(2, 7, 32, generator=generator)
    pipe.scheduler.set_timesteps(3)
    with torch.no_grad():
        for step in pipe.scheduler.timesteps:
            noise = pipe.unet(latents, step, context).sample
            latents = pipe.scheduler.step(noise, step, latents).prev_sample
    assert latents.shape == (2, 4, 12, 18) and torch.isfinite(latents).all()
    remove_patch(pipe)
    assert not is_patched(pipe)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio=1.0), "ratio"),
        (dict(min_tokens=0), "min_tokens"),
        (dict(split=2.0), "split"),
        (dict(block=0), ">= 1"),
        (dict(attention="tome"), "attention must be one of elfatt, merge-only"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_patch(tiny_unet(), **kwargs)


def test_rejects_objects_without_a_unet():
    with pytest.raises(TypeError, match="set_processor"):
        apply_patch(torch.nn.Linear(2, 2))


def test_importing_elfatt_does_not_import_diffusers_or_triton():
    code = "import sys, elfatt, elfatt_lab.bench.cli; assert not {'diffusers', 'triton'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bad_options_leave_an_existing_patch_in_place():
    unet = apply_patch(tiny_unet(), min_tokens=1, block=4)
    with pytest.raises(ValueError, match="ratio"):
        apply_patch(unet, ratio=1.0)
    assert is_patched(unet) and patch_config(unet).block == 4


def test_attention_slicing_after_the_patch_is_seen_and_slicing_before_it_composes():
    """diffusers' attention slicing replaces every processor: after apply_patch it ends the patch, and
    is_patched says so; before apply_patch the patch wraps the sliced processors."""
    from diffusers.models.attention_processor import SlicedAttnProcessor

    sample, step, context = _inputs(12, 20)
    unet = apply_patch(tiny_unet(), min_tokens=1, block=4)
    unet.set_attention_slice(1)
    assert not is_patched(unet) and patch_config(unet) is None
    sliced = dict(unet.attn_processors)
    remove_patch(unet)
    assert all(unet.attn_processors[name] is processor for name, processor in sliced.items())
    with torch.no_grad():
        reference = tiny_unet()
        reference.set_attention_slice(1)
        plain = reference(sample, step, context).sample
        apply_patch(reference, min_tokens=1, block=4)
        assert is_patched(reference)
        patched = reference(sample, step, context).sample
        remove_patch(reference)
        assert torch.equal(reference(sample, step, context).sample, plain)
    assert all(isinstance(p, SlicedAttnProcessor) for p in reference.attn_processors.values())
    assert not torch.equal(patched, plain)


def two_level_unet() -> UNet2DConditionModel:
    return build_unet(TWO_LEVELS)


@pytest.mark.parametrize("latent", [(48, 64), (104, 152)], ids=["sd-384x512", "sdxl-832x1216"])
def test_layers_are_chosen_by_level_at_any_latent_size(latent, monkeypatch):
    """max_downsample=1 patches the top level's three self-attention layers (one down, two up) at 384x512 and at
    SDXL's 832x1216 bucket, where a 4096-token threshold patched none; 2 adds the half-size level's four
    (one down, the mid block's, two up)."""
    seen = record_op_calls(monkeypatch, "block")
    unet = two_level_unet()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, *latent, generator=generator)
    context = torch.randn(1, 3, 16, generator=generator)
    half = ((latent[0] + 1) // 2, (latent[1] + 1) // 2)
    with torch.no_grad():
        for max_downsample, expected in ((1, [latent] * 3), (2, [latent] * 3 + [half] * 4)):
            seen.clear()
            apply_patch(unet, max_downsample=max_downsample, ratio=0.0, block=8)
            unet(sample, torch.tensor(10), context)
            assert sorted(seen) == sorted(expected), max_downsample


def test_a_deep_copy_and_a_direct_forward_never_use_a_stale_latent_size():
    import copy

    sample, step, context = _inputs(12, 20)
    unet = tiny_unet()
    with torch.no_grad():
        plain = unet(sample, step, context).sample
        apply_patch(unet, block=4, ratio=0.0)
        patched = unet(_inputs(16, 16)[0], step, context).sample  # leaves no size behind
        patched = unet(sample, step, context).sample
        twin = copy.deepcopy(unet)
        # a stale size moves the output by ~0.15; the copy's own kernels round differently by ~1e-7
        torch.testing.assert_close(twin(sample, step, context).sample, patched, rtol=1e-5, atol=1e-5)
        other = _inputs(9, 7)[0]
        torch.testing.assert_close(
            twin(other, step, context).sample, unet(other, step, context).sample, rtol=1e-5, atol=1e-5
        )
        with pytest.warns(UserWarning, match="without its forward hooks"):
            direct = unet.forward(sample, step, context).sample
    assert torch.equal(direct, plain) and not torch.equal(patched, plain)
