"""Evidence without pretrained weights: the patch on a randomly initialised UNet with Stable Diffusion 1.5's config,
or on PixArt-Sigma's, SD3 medium's or FLUX.1's transformer at its real width with fewer layers (``--model
pixart-sigma --layers 2``).

``python -m elfatt_lab.diffusion.bench`` times one denoiser step and the self-attention layers inside it, with and
without the patch (every variant in turn, round after round: medians and spread), at the given latent sizes, in
float32 or bfloat16, and reports how far the patched output is from the original.
With random weights the difference says how much the patch changes a layer stack of this size, not image quality.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from elfatt.diffusion.patch import apply_patch, remove_patch
from elfatt_lab._csv import write_rows

__all__ = [
    "SD15_UNET_CONFIG",
    "PIXART_SIGMA_CONFIG",
    "SD3_MEDIUM_CONFIG",
    "SelfAttentionClock",
    "build_sd15_unet",
    "build_pixart",
    "build_sd3",
    "build_flux",
    "DENOISERS",
    "interleaved_steps",
    "main",
]

# The unet/config.json of Stable Diffusion 1.5, written out so nothing is downloaded.
SD15_UNET_CONFIG = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


# The transformer/config.json of PixArt-Sigma XL-2 at 1024 pixels (28 layers of 16 heads of 72 channels, T5's
# 4096-wide text), written out so nothing is downloaded.
PIXART_SIGMA_CONFIG = dict(
    activation_fn="gelu-approximate",
    attention_bias=True,
    attention_head_dim=72,
    caption_channels=4096,
    cross_attention_dim=1152,
    in_channels=4,
    interpolation_scale=2,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    norm_type="ada_norm_single",
    num_attention_heads=16,
    num_embeds_ada_norm=1000,
    num_layers=28,
    out_channels=8,
    patch_size=2,
    sample_size=128,
    use_additional_conditions=False,
)
PIXART_TEXT_TOKENS = 300

# The transformer/config.json of Stable Diffusion 3 medium (24 joint blocks of 24 heads of 64 channels); its text is
# CLIP's 77 tokens and T5's 256, 4096 wide, and a 2048-wide pooled vector.
SD3_MEDIUM_CONFIG = dict(
    attention_head_dim=64,
    caption_projection_dim=1536,
    in_channels=16,
    joint_attention_dim=4096,
    num_attention_heads=24,
    num_layers=24,
    out_channels=16,
    patch_size=2,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
    sample_size=128,
)
SD3_TEXT_TOKENS = 77 + 256

# The transformer/config.json of FLUX.1 (19 double-stream and 38 single-stream blocks of 24 heads of 128 channels);
# its latents are packed 2x2 (64 channels), its text is T5's 512 tokens, 4096 wide, and a 768-wide pooled vector.
FLUX1_CONFIG = dict(
    attention_head_dim=128,
    axes_dims_rope=(16, 56, 56),
    guidance_embeds=False,
    in_channels=64,
    joint_attention_dim=4096,
    num_attention_heads=24,
    num_layers=19,
    num_single_layers=38,
    patch_size=1,
    pooled_projection_dim=768,
)
FLUX_TEXT_TOKENS = 512


def _random_weights(class_name: str, config: dict, seed: int) -> nn.Module:
    """diffusers' ``class_name`` built from ``config`` with weights drawn from ``seed``, in eval mode."""
    import diffusers

    torch.manual_seed(seed)
    return getattr(diffusers, class_name)(**config).eval()


def build_pixart(layers: int, seed: int = 0) -> nn.Module:
    """PixArt-Sigma's PixArtTransformer2DModel with random weights and ``layers`` of its 28 layers."""
    return _random_weights("PixArtTransformer2DModel", {**PIXART_SIGMA_CONFIG, "num_layers": layers}, seed)


def build_sd3(layers: int, seed: int = 0) -> nn.Module:
    """SD3 medium's SD3Transformer2DModel with random weights and ``layers`` of its 24 joint blocks."""
    return _random_weights("SD3Transformer2DModel", {**SD3_MEDIUM_CONFIG, "num_layers": layers}, seed)


def build_flux(layers: int, seed: int = 0) -> nn.Module:
    """FLUX.1's FluxTransformer2DModel with random weights, ``layers`` double-stream and ``layers`` single-stream
    blocks."""
    config = {**FLUX1_CONFIG, "num_layers": layers, "num_single_layers": layers}
    return _random_weights("FluxTransformer2DModel", config, seed)


def build_sd15_unet(seed: int = 0) -> nn.Module:
    """SD 1.5's UNet2DConditionModel with random weights (860M parameters)."""
    return _random_weights("UNet2DConditionModel", SD15_UNET_CONFIG, seed)


Inputs = tuple[tuple, dict]


def _sd15_inputs(batch: int, latent: tuple[int, int], generator: torch.Generator) -> Inputs:
    sample = torch.randn(batch, 4, *latent, generator=generator)
    return (sample, torch.tensor(500), torch.randn(batch, 77, 768, generator=generator)), {}


def _pixart_inputs(batch: int, latent: tuple[int, int], generator: torch.Generator) -> Inputs:
    sample = torch.randn(batch, 4, *latent, generator=generator)
    options = dict(
        encoder_hidden_states=torch.randn(batch, PIXART_TEXT_TOKENS, 4096, generator=generator),
        timestep=torch.full((batch,), 500),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    return (sample,), options


def _sd3_inputs(batch: int, latent: tuple[int, int], generator: torch.Generator) -> Inputs:
    sample = torch.randn(batch, SD3_MEDIUM_CONFIG["in_channels"], *latent, generator=generator)
    options = dict(
        encoder_hidden_states=torch.randn(batch, SD3_TEXT_TOKENS, 4096, generator=generator),
        pooled_projections=torch.randn(batch, 2048, generator=generator),
        timestep=torch.full((batch,), 500),
    )
    return (sample,), options


def _flux_inputs(batch: int, latent: tuple[int, int], generator: torch.Generator) -> Inputs:
    """FLUX's packed tokens (2x2 latent patches) and their ids, as its pipeline makes them."""
    rows, cols = latent[0] // 2, latent[1] // 2
    tokens = torch.randn(batch, rows * cols, 64, generator=generator)
    grid_rows, grid_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(grid_rows), grid_rows, grid_cols], -1).reshape(-1, 3).float()
    options = dict(
        encoder_hidden_states=torch.randn(batch, FLUX_TEXT_TOKENS, 4096, generator=generator),
        pooled_projections=torch.randn(batch, 768, generator=generator),
        timestep=torch.full((batch,), 0.5),
        img_ids=image_ids,
        txt_ids=torch.zeros(FLUX_TEXT_TOKENS, 3),
    )
    return (tokens,), options


@dataclass(frozen=True)
class Denoiser:
    """A benchmarked denoiser: its name given ``--layers``, its builder (random weights, ``--layers`` of its
    layers) and the inputs of one step (batch, latent size, generator)."""

    describe: Callable[[int], str]
    build: Callable[[int], nn.Module]
    inputs: Callable[[int, tuple[int, int], torch.Generator], Inputs]


DENOISERS = {
    "sd15": Denoiser(lambda layers: "SD 1.5 UNet", lambda layers: build_sd15_unet(), _sd15_inputs),
    "pixart-sigma": Denoiser(
        lambda layers: f"PixArt-Sigma transformer, {layers} of 28 layers", build_pixart, _pixart_inputs
    ),
    "sd3-medium": Denoiser(
        lambda layers: f"SD3 medium transformer, {layers} of 24 joint blocks", build_sd3, _sd3_inputs
    ),
    "flux1": Denoiser(
        lambda layers: f"FLUX.1 transformer, {layers} double- and {layers} single-stream blocks",
        build_flux,
        _flux_inputs,
    ),
}


class SelfAttentionClock:
    """Adds up the wall time spent inside every self-attention module during a call: ``attn1`` (UNets, PixArt) and
    SD3's joint ``attn``."""

    def __init__(self, unet: nn.Module) -> None:
        self.seconds = 0.0
        self._starts: list[float] = []
        self._handles = []
        for name, module in unet.named_modules():
            if name.endswith(("attn1", ".attn")):
                self._handles.append(module.register_forward_pre_hook(self._start))
                self._handles.append(module.register_forward_hook(self._stop))

    def _start(self, *_: object) -> None:
        self._starts.append(time.perf_counter())

    def _stop(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._starts.pop()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _timed_call(clocked: nn.Module, step: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    """One denoiser step: its ms, the ms inside ``clocked``'s self-attention layers, and its output."""
    clock = SelfAttentionClock(clocked)
    with torch.inference_mode():
        start = time.perf_counter()
        out = step()
        seconds = time.perf_counter() - start
    clock.remove()
    return seconds * 1e3, clock.seconds * 1e3, out


def _spread(values: list[float]) -> float:
    """(max - min) / median: how far apart a variant's rounds lie."""
    return (max(values) - min(values)) / statistics.median(values)


def interleaved_steps(
    model: nn.Module,
    clocked: nn.Module,
    step: Callable[[], torch.Tensor],
    variants: dict[str, dict | None],
    rounds: int,
) -> dict[str, dict]:
    """Time ``step()`` (one denoiser step of ``model``) with every variant (``apply_patch`` options on ``model``,
    None the original) in turn, round after round, after one warm-up step each, the patch switched outside the
    timing: per variant the median step and median ms inside ``clocked``'s self-attention layers, the step's spread,
    and the relative difference of its (warm-up) output to the first variant's."""
    outputs, times = {}, {name: [] for name in variants}

    def run(name: str) -> tuple[float, float, torch.Tensor]:
        remove_patch(model)
        if variants[name] is not None:
            apply_patch(model, **variants[name])
        return _timed_call(clocked, step)

    for name in variants:
        outputs[name] = run(name)[2].float()
    for _ in range(rounds):
        for name in variants:
            times[name].append(run(name)[:2])
    remove_patch(model)
    base = outputs[next(iter(variants))]
    result = {}
    for name, measured in times.items():
        steps = [step for step, _ in measured]
        result[name] = dict(
            step_ms=statistics.median(steps),
            self_attention_ms=statistics.median(attention for _, attention in measured),
            step_spread=_spread(steps),
            relative_difference=((outputs[name] - base).norm() / base.norm()).item(),
        )
    return result


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _cast(value: object, dtype: torch.dtype) -> object:
    """Floating tensors (nested in dicts) cast to ``dtype``; the rest as it is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, dict):
        return {key: _cast(item, dtype) for key, item in value.items()}
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; prints a table and writes ``diffusion.csv`` under ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.diffusion.bench", description=__doc__)
    parser.add_argument("--model", choices=list(DENOISERS), default="sd15")
    parser.add_argument(
        "--layers",
        type=int,
        default=2,
        help="transformers: layers of their 28 (PixArt) or 24 (SD3); FLUX: of each kind",
    )
    parser.add_argument("--latents", nargs="+", default=["64x64", "128x128"], help="latent sizes HxW")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.0], help="merge ratios of the patch")
    parser.add_argument("--block", type=int, nargs="+", default=[16], help="block sides of the patch")
    parser.add_argument("--split", type=float, nargs="+", default=[0.5], help="fractions of global heads")
    parser.add_argument("--max-downsample", type=int, default=1, help="patch the UNet levels downsampled at most this")
    parser.add_argument("--batch", type=int, default=2, help="2: classifier-free guidance's pair")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights and inputs")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every variant in turn")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    try:
        latents = [tuple(int(side) for side in text.lower().split("x")) for text in args.latents]
        if any(len(size) != 2 or min(size) < 1 for size in latents):
            raise ValueError
    except ValueError:
        parser.exit(2, f"{parser.prog}: error: latent sizes must look like 64x64, got {args.latents}\n")
    if args.repeats < 1:
        parser.exit(2, f"{parser.prog}: error: --repeats must be >= 1, got {args.repeats}\n")

    denoiser = DENOISERS[args.model]
    dtype = DTYPES[args.dtype]
    unet = denoiser.build(args.layers).to(dtype)
    generator = torch.Generator().manual_seed(0)
    variants: dict[str, dict | None] = {"original": None}
    for ratio, block, split in itertools.product(args.ratios, args.block, args.split):
        name = f"elfatt ratio={ratio:g}"
        name += f" block={block}" if len(args.block) > 1 else ""
        name += f" split={split:g}" if len(args.split) > 1 else ""
        variants[name] = dict(ratio=ratio, block=block, split=split, max_downsample=args.max_downsample)
    rows = []
    print(
        f"{denoiser.describe(args.layers)} (random weights), batch {args.batch}, {args.dtype}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds"
    )
    columns = ("latent", 9), ("variant", 34), ("step ms", 10), ("spread", 7), ("self-attn ms", 13), ("step x", 7)
    print(" ".join(f"{name:>{width}}" for name, width in columns) + f" {'attn x':>7} {'rel diff':>9}")
    for height, width in latents:
        inputs, options = denoiser.inputs(args.batch, (height, width), generator)
        inputs, options = tuple(_cast(x, dtype) for x in inputs), _cast(options, dtype)
        measured = interleaved_steps(
            unet, unet, lambda inputs=inputs, options=options: unet(*inputs, **options).sample, variants, args.repeats
        )
        base = measured["original"]
        for name, result in measured.items():
            row = dict(
                model=args.model,
                dtype=args.dtype,
                latent=f"{height}x{width}",
                variant=name,
                **result,
                step_speedup=base["step_ms"] / result["step_ms"],
                attention_speedup=base["self_attention_ms"] / result["self_attention_ms"],
            )
            rows.append(row)
            print(
                f"{row['latent']:>9} {name:>34} {row['step_ms']:>10.0f} {100 * row['step_spread']:>6.0f}% "
                f"{row['self_attention_ms']:>13.0f} {row['step_speedup']:>6.2f}x {row['attention_speedup']:>6.2f}x "
                f"{row['relative_difference']:>9.3f}",
                flush=True,
            )
    write_rows(rows, args.out / "diffusion.csv")
    print(f"wrote {args.out / 'diffusion.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
