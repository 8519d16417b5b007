"""Applying and removing the ELFATT processors on a diffusers UNet or self-attention diffusion transformer, through
its attention layers' ``set_processor``."""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from elfatt.diffusion.joint import FluxELFATTProcessor, JointELFATTProcessor
from elfatt.diffusion.processor import ATTENTION_MODES, ELFATTAttnProcessor, LatentSizeHooks, PatchConfig, PatchState
from elfatt.ops.blocks import BlockSpec, encode_block

__all__ = ["apply_patch", "remove_patch", "is_patched", "patch_config"]

_PATCH_ATTRIBUTE = "_elfatt_patch"


# Processors of joint text+image attention that the patch does not compute yet: it would leave them as they are.
_UNCOVERED_PROCESSORS = ("FluxIPAdapter",)
# The joint attention it computes, by the processor's class name: SD3's and FLUX's.
_JOINT_PROCESSORS = {"JointAttnProcessor2_0": JointELFATTProcessor, "FluxAttnProcessor": FluxELFATTProcessor}


def _unet(pipe_or_unet: object) -> nn.Module:
    """The denoiser of a pipeline (its ``.unet`` or ``.transformer``) or the model itself, checked to have diffusers
    attention layers."""
    unet = getattr(pipe_or_unet, "unet", None) or getattr(pipe_or_unet, "transformer", None) or pipe_or_unet
    if not (isinstance(unet, nn.Module) and _attention_layers(unet)):
        raise TypeError(
            "expected a diffusers pipeline with a .unet or .transformer, or a model with attention layers "
            f"(set_processor), got {type(pipe_or_unet)}"
        )
    return unet


def _attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's diffusers ``Attention`` layers by processor name, as ``attn_processors`` names them (found
    directly, since not every diffusers model has ``set_attn_processor``: DiT's has not)."""
    return {
        f"{name}.processor": module
        for name, module in model.named_modules()
        if hasattr(module, "set_processor") and hasattr(module, "processor")
    }


def _processors(model: nn.Module) -> dict[str, object]:
    return {name: layer.processor for name, layer in _attention_layers(model).items()}


def _set_processors(model: nn.Module, processors: dict[str, object]) -> None:
    """Set the processors ``processors`` names; the other layers keep theirs."""
    for name, layer in _attention_layers(model).items():
        if name in processors:
            layer.set_processor(processors[name])


# A diffusion transformer's stacks of blocks, in the order a call runs them (FLUX: double-, then single-stream).
_BLOCK_STACKS = ("transformer_blocks", "single_transformer_blocks")


def _exact_layers(model: nn.Module, exact_blocks: tuple[int, int]) -> set[str]:
    """The processor names inside the first ``exact_blocks[0]`` and last ``exact_blocks[1]`` transformer blocks."""
    if exact_blocks == (0, 0):
        return set()
    stacks = [getattr(model, name, None) for name in _BLOCK_STACKS]
    blocks = [
        f"{name}.{index}."
        for name, stack in zip(_BLOCK_STACKS, stacks, strict=True)
        if isinstance(stack, nn.ModuleList)
        for index in range(len(stack))
    ]
    if not blocks:
        raise ValueError(
            f"exact_blocks: {type(model).__name__} has no stack of transformer blocks (transformer_blocks); "
            "a UNet's layers are chosen by level, with max_downsample"
        )
    first, last = exact_blocks
    if first + last >= len(blocks):
        raise ValueError(f"exact_blocks={exact_blocks} leaves none of the {len(blocks)} transformer blocks to patch")
    exact = blocks[:first] + blocks[len(blocks) - last :]
    return {name for name in _attention_layers(model) if name.startswith(tuple(exact))}


def is_patched(pipe_or_unet: object) -> bool:
    """Whether :func:`apply_patch` is in effect on this pipeline or UNet: patched, and every attention processor
    still one of the patch's (``enable_attention_slicing`` or ``set_attn_processor`` after the patch replace them,
    and the patch is then no longer in effect)."""
    unet = _unet(pipe_or_unet)
    return hasattr(unet, _PATCH_ATTRIBUTE) and _processors_are_ours(unet)


def _processors_are_ours(unet: nn.Module) -> bool:
    """Whether every layer the patch set (the names of its saved originals) still runs the patch's processor."""
    ours = (ELFATTAttnProcessor, JointELFATTProcessor)
    patched = getattr(unet, _PATCH_ATTRIBUTE)[0]
    return all(isinstance(processor, ours) for name, processor in _processors(unet).items() if name in patched)


def _wrapped(state: PatchState, original: object) -> ELFATTAttnProcessor | JointELFATTProcessor:
    """The patch's processor around a layer's ``original`` one: SD3's or FLUX's joint attention, or any other."""
    return _JOINT_PROCESSORS.get(type(original).__name__, ELFATTAttnProcessor)(state, original)


def _check_config(config: PatchConfig) -> None:
    if not 0.0 <= config.ratio < 1.0:
        raise ValueError(f"ratio must lie in [0, 1), got {config.ratio}")
    if config.min_tokens is not None and config.min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1 (or None), got {config.min_tokens}")
    if config.max_downsample < 1 or config.max_downsample & (config.max_downsample - 1):
        raise ValueError(f"max_downsample must be a power of two (1, 2, 4, 8), got {config.max_downsample}")
    pair = config.exact_blocks
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(n, int) and n >= 0 for n in pair)):
        raise ValueError(f"exact_blocks must be a pair of counts >= 0 (first, last), got {config.exact_blocks!r}")
    if config.sx < 1 or config.sy < 1:
        raise ValueError(f"sx and sy must be >= 1, got sx={config.sx}, sy={config.sy}")
    if not 0.0 <= config.split <= 1.0:
        raise ValueError(f"split must lie in [0, 1], got {config.split}")
    if config.attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {config.attention!r}")
    window = config.timesteps
    numbers = isinstance(window, tuple) and len(window) == 2 and all(isinstance(t, (int, float)) for t in window)
    if window is not None and not (numbers and all(map(math.isfinite, window)) and window[0] <= window[1]):
        raise ValueError(f"timesteps must be a pair (low, high) of finite numbers, low <= high, got {window!r}")
    encode_block(config.block)


def apply_patch(
    pipe_or_unet: object,
    *,
    ratio: float = 0.5,
    block: BlockSpec = 16,
    split: float = 0.5,
    max_downsample: int = 1,
    min_tokens: int | None = None,
    exact_blocks: tuple[int, int] = (0, 0),
    cross_attention: bool = False,
    sx: int = 2,
    sy: int = 2,
    random_destinations: bool = True,
    seed: int = 0,
    attention: str = "elfatt",
    timesteps: tuple[float, float] | None = None,
) -> nn.Module:
    """Compute the UNet's self-attention layers with ELFATT, training-free; returns the UNet.

    Works on any diffusers UNet (SD 1.x/2.x and SDXL's ``UNet2DConditionModel``), on diffusion transformers whose
    image tokens attend among themselves (``PixArtTransformer2DModel``, ``DiTTransformer2DModel``: their token grid
    is the latent over the patch size), on SD3's joint text+image attention (``SD3Transformer2DModel``: the image
    tokens run ELFATT with the text as prefix tokens, see :class:`~elfatt.diffusion.joint.JointELFATTProcessor`; no
    merging there), on FLUX's double- and single-stream blocks (``FluxTransformer2DModel``, the same after its
    rotary embedding; its grid from ``img_ids``), and on any latent size, non-square included.
    :func:`remove_patch` restores the original processors, the very same objects.

    Args:
        pipe_or_unet: a pipeline with a ``.unet`` or ``.transformer``, or the model itself.
        ratio: fraction of a layer's tokens merged away before attention (ToMe-SD's ratio; 0 merges none).
        block: block of the softmax heads, in latent tokens of the layer's level.
        split: fraction of each layer's heads that run global linear attention, rounded down (SD 2's 5-head
            layers get 2 global heads at 0.5).
        max_downsample: patch the layers of the UNet levels downsampled at most this much from the latent, as
            ToMe-SD's ``max_downsample``: 1 (the top level: SD's 64x64 at 512 pixels, 48x64 at 384x512), 2, 4 or 8.
            The choice follows the level, so it holds at every image size.
        min_tokens: also leave alone the layers with fewer tokens; None for no such bound.
        exact_blocks: a diffusion transformer's first and last transformer blocks left to their original attention,
            as a pair of counts ``(first, last)``; FLUX's double-stream blocks come first, its single-stream ones
            last. (A UNet's layers are chosen by level, with ``max_downsample``.)
        cross_attention: also merge the queries of cross-attention layers (their text keys stay exact).
        sx, sy: token-merging cell; one destination token per cell.
        random_destinations: draw each cell's destination at random (seeded by ``seed``), as ToMe-SD does;
            False takes each cell's first token.
        seed: seed of the merge's random draws.
        attention: ``"elfatt"``, or ``"merge-only"``: the merged tokens run the layer's own exact softmax attention
            (ToMe-SD's acceleration alone, the peer to compare with; ``block`` and ``split`` are then unused).
        timesteps: ``(low, high)``: patch only the calls whose timestep (as the model is called with it: 0 to 999
            for SD, PixArt, DiT and SD3's schedulers) lies in ``[low, high]``; the others run the original attention
            (Agent-SD's use of its attention in the early steps only). None patches every call.
    """
    unet = _unet(pipe_or_unet)
    config = PatchConfig(
        ratio=ratio,
        block=block,
        split=split,
        max_downsample=max_downsample,
        min_tokens=min_tokens,
        exact_blocks=tuple(exact_blocks) if isinstance(exact_blocks, list) else exact_blocks,
        cross_attention=cross_attention,
        sx=sx,
        sy=sy,
        random_destinations=random_destinations,
        seed=seed,
        attention=attention,
        timesteps=tuple(timesteps) if isinstance(timesteps, list) else timesteps,
    )
    _check_config(config)
    exact = _exact_layers(unet, config.exact_blocks)
    remove_patch(unet)
    originals = {name: processor for name, processor in _processors(unet).items() if name not in exact}
    uncovered = sorted(
        {type(p).__name__ for p in originals.values() if type(p).__name__.startswith(_UNCOVERED_PROCESSORS)}
    )
    if uncovered:
        raise TypeError(
            f"{type(unet).__name__} attends text and image tokens jointly ({', '.join(uncovered)}), which "
            "elfatt.diffusion does not compute yet; it patches UNets, PixArt, DiT, SD3 and FLUX"
        )
    state = PatchState(config)
    hooks = LatentSizeHooks(state)
    handles = (
        unet.register_forward_pre_hook(hooks.before, with_kwargs=True),
        unet.register_forward_hook(hooks.after, with_kwargs=True),
    )
    _set_processors(unet, {name: _wrapped(state, original) for name, original in originals.items()})
    setattr(unet, _PATCH_ATTRIBUTE, (originals, handles, state))
    return unet


def remove_patch(pipe_or_unet: object) -> nn.Module:
    """Restore the processors the UNet had before :func:`apply_patch`; a no-op on an unpatched UNet.

    Where the patch's processors were since replaced (attention slicing, say), the UNet keeps those: only the
    patch's own hook and state are removed.
    """
    unet = _unet(pipe_or_unet)
    if not hasattr(unet, _PATCH_ATTRIBUTE):
        return unet
    originals, handles, _ = getattr(unet, _PATCH_ATTRIBUTE)
    if _processors_are_ours(unet):
        _set_processors(unet, dict(originals))
    for handle in handles:
        handle.remove()
    delattr(unet, _PATCH_ATTRIBUTE)
    return unet


def patch_config(pipe_or_unet: object) -> PatchConfig | None:
    """The configuration of the patch in effect, or None."""
    unet = _unet(pipe_or_unet)
    return dataclasses.replace(getattr(unet, _PATCH_ATTRIBUTE)[2].config) if is_patched(unet) else None
