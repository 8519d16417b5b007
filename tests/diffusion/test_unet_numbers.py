"""The patch checked by numbers at UNet level, in float64: with no global heads, one block over the whole latent and
no merging it is the original attention; an SDXL-style UNet; a guidance-doubled batch equals its two halves."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402
from unets import CONTEXT_DIM, SDXL_STYLE, TEXT_EMBED_DIM, TWO_LEVELS, build_unet, record_op_calls  # noqa: E402

from elfatt.diffusion import apply_patch, remove_patch  # noqa: E402

UNETS = {"sd": TWO_LEVELS, "sdxl": SDXL_STYLE}


def _call(unet: UNet2DConditionModel, sample: torch.Tensor, context: torch.Tensor, extra: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, torch.tensor(321), context, **extra).sample


def _inputs(kind: str, batch: int, latent: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(batch, 4, *latent, generator=generator, dtype=torch.float64)
    context = torch.randn(batch, 5, CONTEXT_DIM, generator=generator, dtype=torch.float64)
    extra = {}
    if kind == "sdxl":
        extra = dict(
            added_cond_kwargs=dict(
                text_embeds=torch.randn(batch, TEXT_EMBED_DIM, generator=generator, dtype=torch.float64),
                time_ids=torch.tensor([[384.0, 512.0, 0.0, 0.0, 384.0, 512.0]] * batch, dtype=torch.float64),
            )
        )
    return sample, context, extra


@pytest.fixture
def attended_grids(monkeypatch) -> list[tuple[int, int]]:
    """The grids the patched layers ran their block attention on, so a test sees that layers were patched."""
    return record_op_calls(monkeypatch, "block")


@pytest.mark.parametrize("kind", UNETS)
@pytest.mark.parametrize("latent", [(12, 20), (9, 7)])
def test_no_global_heads_one_block_and_no_merge_is_the_original_unet(kind, latent, attended_grids):
    unet = build_unet(UNETS[kind]).double()
    sample, context, extra = _inputs(kind, 2, latent)
    original = _call(unet, sample, context, extra)
    apply_patch(unet, ratio=0.0, split=0.0, block=(None, None), max_downsample=2)
    patched = _call(unet, sample, context, extra)
    half = ((latent[0] + 1) // 2, (latent[1] + 1) // 2)
    # Every self-attention layer of both levels: SD's 3 + 4, SDXL's with two transformer layers at the second level.
    expected = {"sd": [latent] * 3 + [half] * 4, "sdxl": [latent] * 3 + [half] * 8}[kind]
    assert sorted(attended_grids) == sorted(expected)
    error = ((patched - original).abs().max() / original.abs().max()).item()
    assert error < 1e-12, error


@pytest.mark.parametrize("kind", UNETS)
@pytest.mark.parametrize("random_destinations", [False, True])
def test_a_guidance_doubled_batch_equals_its_halves(kind, random_destinations, attended_grids):
    """Classifier-free guidance runs the unconditional and the conditional latent as one batch of two; merging,
    ELFATT and the block layout must treat each half as if it ran alone (with the same random draws)."""
    unet = build_unet(UNETS[kind]).double()
    sample, context, extra = _inputs(kind, 1, (12, 20))
    doubled_sample = torch.cat([sample, sample])
    doubled_context = torch.cat([torch.zeros_like(context), context])  # the "empty prompt" half, then the prompt
    doubled_extra = {
        "added_cond_kwargs": {key: torch.cat([value, value]) for key, value in extra["added_cond_kwargs"].items()}
    } if extra else {}  # fmt: skip
    options = dict(ratio=0.5, block=4, split=0.5, random_destinations=random_destinations, seed=3)
    apply_patch(unet, **options)
    doubled = _call(unet, doubled_sample, doubled_context, doubled_extra)
    halves = []
    for half_context in (torch.zeros_like(context), context):
        remove_patch(unet)
        apply_patch(unet, **options)  # the same random draws as the doubled call had
        halves.append(_call(unet, sample, half_context, extra))
    assert attended_grids, "no layer was patched"
    error = ((doubled - torch.cat(halves)).abs().max() / doubled.abs().max()).item()
    assert error < 1e-12, error
    remove_patch(unet)
    assert not torch.allclose(_call(unet, doubled_sample, doubled_context, doubled_extra), doubled)
