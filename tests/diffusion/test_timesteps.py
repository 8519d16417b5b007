"""``apply_patch(timesteps=(low, high))``: only the calls whose timestep lies in the window are patched, on UNets and
on every transformer the patch covers (their timestep passed positionally or by keyword)."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("diffusers")

from test_transformers import (  # noqa: E402
    _dit,
    _dit_call,
    _flux,
    _flux_call,
    _latent,
    _pixart,
    _pixart_call,
    _sd3,
    _sd3_call,
)
from unets import CONTEXT_DIM, TWO_LEVELS, build_unet  # noqa: E402

import elfatt.diffusion as diffusion  # noqa: E402


def _unet_call(model: torch.nn.Module, latent: torch.Tensor) -> torch.Tensor:
    context = torch.randn(latent.shape[0], 3, CONTEXT_DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(latent, 15, context).sample  # the timestep positional, as pipelines pass it


# (model, call, a window that holds every timestep of the call, one that holds none of them)
MODELS = {
    "unet": (lambda: build_unet(TWO_LEVELS), _unet_call, (10, 20), (16, 999)),
    "pixart": (_pixart, _pixart_call, (15, 15), (0, 14)),  # timestep 15 for the batch; both ends included
    "dit": (_dit, _dit_call, (0, 20), (16, 999)),  # timesteps 5 and 15
    "sd3": (_sd3, _sd3_call, (10, 10), (11, 1000)),
    "flux": (_flux, _flux_call, (0.25, 0.75), (0.0, 0.4)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_only_the_calls_within_the_window_are_patched(name):
    build, call, within, outside = MODELS[name]
    model = build()
    latent = _latent(2, 8, 8)
    original = call(model, latent)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2)
    patched = call(model, latent)
    assert not torch.allclose(patched, original, atol=1e-6)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2, timesteps=within)
    assert torch.equal(call(model, latent), patched)
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2, timesteps=outside)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # running the original here is asked for, not a missed hook
        assert torch.equal(call(model, latent), original)
    assert diffusion.patch_config(model).timesteps == outside


def test_a_batch_with_timesteps_on_both_sides_of_the_window_runs_the_original():
    model = _dit()
    latent = _latent(2, 8, 8)
    original = _dit_call(model, latent)  # timesteps 5 and 15
    diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2, timesteps=(10, 999))
    assert torch.equal(_dit_call(model, latent), original)


def test_a_call_without_a_timestep_is_refused_in_one_line():
    model = _dit()
    diffusion.apply_patch(model, timesteps=(0, 500))
    with pytest.raises(ValueError, match=r"timesteps=\(0, 500\)\) needs the timestep of each call"):
        model(_latent(1, 8, 8), class_labels=torch.tensor([1]))


@pytest.mark.parametrize("window", [(5,), (3, 2), (0, float("nan")), ("a", 1), 7])
def test_timesteps_must_be_an_ordered_pair_of_numbers(window):
    with pytest.raises(ValueError, match="timesteps must be a pair"):
        diffusion.apply_patch(_dit(), timesteps=window)


def test_a_windowed_patch_compiles_and_matches_eager_on_both_sides_of_the_window():
    model = _pixart()
    latent = _latent(2, 8, 12)
    original = _pixart_call(model, latent)  # timestep 15
    for window, inside in (((10, 20), True), ((16, 999), False)):
        diffusion.apply_patch(model, ratio=0.0, split=0.5, block=2, timesteps=window)
        eager = _pixart_call(model, latent)
        assert torch.equal(eager, original) is not inside
        compiled = _pixart_call(torch.compile(model, backend="aot_eager"), latent)
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
        torch._dynamo.reset()
