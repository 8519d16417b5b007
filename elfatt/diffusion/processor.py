"""The diffusers attention processor that computes a pretrained attention layer with ELFATT, training-free."""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt.diffusion.merge import TokenMerge, bipartite_soft_matching_2d
from elfatt.ops import BlockSpec, elfatt, global_head_count

__all__ = [
    "ATTENTION_MODES",
    "PatchConfig",
    "PatchState",
    "ELFATTAttnProcessor",
    "LatentSizeHooks",
    "latent_grid",
    "latent_level",
]

# What a patched self-attention layer computes over its merged tokens: ELFATT, or the layer's own exact softmax
# attention (ToMe-SD's merge-only acceleration, the peer).
ATTENTION_MODES = ("elfatt", "merge-only")


@dataclass(frozen=True)
class PatchConfig:
    """How the patch computes attention; see :func:`elfatt.diffusion.apply_patch` for each field."""

    ratio: float = 0.5
    block: BlockSpec = 16
    split: float = 0.5
    max_downsample: int = 1
    min_tokens: int | None = None
    exact_blocks: tuple[int, int] = (0, 0)
    cross_attention: bool = False
    sx: int = 2
    sy: int = 2
    random_destinations: bool = True
    seed: int = 0
    attention: str = "elfatt"
    timesteps: tuple[float, float] | None = None


@dataclass
class PatchState:
    """What the processors of one patched UNet share: the latent size of the running call, and the merge RNG."""

    config: PatchConfig
    latent_size: tuple[int, int] | None = None
    text_tokens: int | None = None
    outside_timesteps: bool = False
    warned_no_latent: bool = False
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        self.generator.manual_seed(self.config.seed)


def _level_and_grid(
    latent_size: tuple[int, int], tokens: int, max_levels: int = 8
) -> tuple[int, tuple[int, int]] | None:
    """The UNet level with ``tokens`` tokens and its grid: the latent halved (rounding up, as stride-2
    convolutions with padding 1 do) until the count matches, level 0 for the latent itself; None if none does."""
    height, width = latent_size
    for level in range(max_levels):
        if height * width == tokens:
            return level, (height, width)
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    return None


def latent_level(latent_size: tuple[int, int], tokens: int, max_levels: int = 8) -> int | None:
    """How many times the latent is halved to the UNet level with ``tokens`` tokens; None if no level has them."""
    found = _level_and_grid(latent_size, tokens, max_levels)
    return None if found is None else found[0]


def latent_grid(latent_size: tuple[int, int], tokens: int, max_levels: int = 8) -> tuple[int, int] | None:
    """The token grid of the UNet level with ``tokens`` tokens (see :func:`latent_level`); None if no level."""
    found = _level_and_grid(latent_size, tokens, max_levels)
    return None if found is None else found[1]


class LatentSizeHooks:
    """The model's forward pre-hook and hook: the token grid of each call's latent (a transformer's: the latent
    over its patch size), for the processors, cleared after it.

    An object rather than a closure, so that ``copy.deepcopy`` of a patched UNet gives the copy hooks that feed
    the copy's own state. A call that bypasses the hooks (``unet.forward(...)``) thus finds no size, never a
    stale one, and runs the original attention.
    """

    def __init__(self, state: PatchState) -> None:
        self.state = state

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        window = self.state.config.timesteps
        if window is not None and not _timesteps_within(module, args, kwargs, window):
            # left without a latent size, every processor runs the original attention for this call
            self.state.outside_timesteps = True
            return
        text = kwargs.get("encoder_hidden_states")
        self.state.text_tokens = None if text is None else text.shape[1]
        image_ids = kwargs.get("img_ids")
        if image_ids is not None:
            # FLUX: packed tokens, their (row, column) in the id's last two places
            self.state.latent_size = (int(image_ids[..., 1].max()) + 1, int(image_ids[..., 2].max()) + 1)
            return
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        # a transformer's tokens are the latent's patches (a stride-p convolution: sides rounded down)
        patch = getattr(getattr(module, "config", None), "patch_size", None) or 1
        self.state.latent_size = (sample.shape[-2] // patch, sample.shape[-1] // patch)

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        self.state.latent_size = self.state.text_tokens = None
        self.state.outside_timesteps = False


def _timesteps_within(module: torch.nn.Module, args: tuple, kwargs: dict, window: tuple[float, float]) -> bool:
    """Whether every timestep of the model's call lies in ``window`` (both ends included).

    Raises:
        ValueError: when the call passes no timestep.
    """
    timestep = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments.get("timestep")
    if timestep is None:
        raise ValueError(
            f"apply_patch(timesteps={window}) needs the timestep of each call, but {type(module).__name__} was "
            "called without one"
        )
    timestep = torch.as_tensor(timestep)
    return bool(((timestep >= window[0]) & (timestep <= window[1])).all())


class ELFATTAttnProcessor:
    """Self-attention of a pretrained diffusers ``Attention`` computed as ELFATT, with no new weights.

    Per call: the layer's input tokens are merged (ToMe-SD bipartite matching, ``ratio`` of them), q, k, v are
    projected from the merged tokens with the layer's own weights; the first ``split`` of the heads (rounded
    down) run global linear attention over the merged tokens; q, k, v of the other heads are unmerged back to
    the full grid and run exact softmax attention inside ``block`` blocks (the layer's own ``1/sqrt(d)``
    scale); both are unmerged, concatenated and sent through the layer's ``to_out``. LePE is left out: it has
    no pretrained weights, and a zero-initialised LePE adds exactly nothing.

    Layers and calls it does not cover go to the layer's original processor unchanged: attention masks, group
    or spatial norms, q/k norms, levels downsampled more than ``max_downsample`` (or with fewer than
    ``min_tokens`` tokens, when given), a token count that is no level of the latent, and cross-attention
    unless ``cross_attention`` is set (then only the queries are merged and the text keys are attended exactly).

    With ``attention="merge-only"`` the merged tokens run the layer's exact softmax attention instead (ToMe-SD's
    acceleration, without ELFATT: the peer it is measured against).
    """

    def __init__(self, state: PatchState, original: object) -> None:
        self.state = state
        self.original = original

    @functools.cached_property
    def _original_signature(self) -> tuple[frozenset[str], bool]:
        """The wrapped processor's parameter names and whether it takes ``**kwargs``, read once."""
        parameters = inspect.signature(self.original.__call__).parameters
        return frozenset(parameters), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def _call_original(
        self,
        attn: object,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None,
        attention_mask: Tensor | None,
        temb: Tensor | None,
        args: tuple,
        kwargs: dict,
    ) -> Tensor:
        """Call the wrapped processor with only what its signature takes, as diffusers' ``Attention`` does (the
        sliced processors take no ``temb``)."""
        parameters, takes_any = self._original_signature
        options = dict(kwargs, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, temb=temb)
        options = {name: value for name, value in options.items() if takes_any or name in parameters}
        if temb is None and "temb" not in parameters:
            options.pop("temb", None)
        return self.original(attn, hidden_states, *args, **options)

    def _unsupported(self, attn: torch.nn.Module, attention_mask: Tensor | None) -> bool:
        extras = ("spatial_norm", "group_norm", "norm_q", "norm_k", "norm_added_q", "add_q_proj")
        return attention_mask is not None or any(getattr(attn, name, None) is not None for name in extras)

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> Tensor:
        config = self.state.config
        is_cross = encoder_hidden_states is not None
        grid, level = self._grid_and_level(hidden_states)
        if (
            grid is None
            or 2**level > config.max_downsample
            or (config.min_tokens is not None and grid[0] * grid[1] < config.min_tokens)
            or (is_cross and not config.cross_attention)
            or self._unsupported(attn, attention_mask)
        ):
            return self._call_original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, args, kwargs)

        residual = hidden_states
        image_layout = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_layout is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        merge = self._plan_merge(hidden_states, grid)
        merged = merge.merge(hidden_states)
        if is_cross:
            out = self._cross_attention(attn, merged, encoder_hidden_states)
        else:
            out = self._self_attention(attn, merged, merge, grid)
        out = attn.to_out[1](attn.to_out[0](merge.unmerge(out) if is_cross else out))
        if image_layout is not None:
            out = out.transpose(1, 2).reshape(image_layout)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _grid_and_level(self, hidden_states: Tensor) -> tuple[tuple[int, int] | None, int | None]:
        """The token grid of this call and its UNet level, from the latent size of the running UNet call."""
        size = self.state.latent_size
        if size is None:
            if not self.state.warned_no_latent and not self.state.outside_timesteps:
                self.state.warned_no_latent = True
                warnings.warn(
                    "elfatt.diffusion: the patched UNet was called without its forward hooks (unet.forward(...)?), "
                    "so the latent size is unknown; these calls run the original attention",
                    stacklevel=3,
                )
            return None, None
        tokens = hidden_states.shape[2] * hidden_states.shape[3] if hidden_states.ndim == 4 else hidden_states.shape[1]
        found = _level_and_grid(size, tokens)
        return (None, None) if found is None else (found[1], found[0])

    def _plan_merge(self, hidden_states: Tensor, grid: tuple[int, int]) -> TokenMerge:
        config = self.state.config
        generator = self.state.generator if config.random_destinations else None
        return bipartite_soft_matching_2d(
            hidden_states, grid, config.ratio, sx=config.sx, sy=config.sy, generator=generator
        )

    @staticmethod
    def _heads(attn: torch.nn.Module, x: Tensor) -> Tensor:
        """``[B, M, heads * d] -> [B, heads, M, d]``."""
        return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

    def _self_attention(
        self, attn: torch.nn.Module, merged: Tensor, merge: TokenMerge, grid: tuple[int, int]
    ) -> Tensor:
        """ELFATT over the merged tokens; returns ``[B, N, heads * d]`` on the full grid, before ``to_out``."""
        config = self.state.config
        # [B, M, heads, d]: the op's layout, straight from the projections
        q, k, v = (proj(merged).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        batch, _, heads, dim = q.shape
        if config.attention == "merge-only":
            out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), scale=attn.scale)
            return merge.unmerge(out.transpose(1, 2).reshape(batch, -1, heads * dim))
        num_global = global_head_count(heads, config.split, round_down=True)
        parts = []
        if num_global:
            # the global heads attend the merged tokens, which lie on no grid: a 1 x M one, and no LePE
            out = elfatt(
                q[:, :, :num_global], k[:, :, :num_global], v[:, :, :num_global], (1, q.shape[1]),
                num_global_heads=num_global,
            )  # fmt: skip
            parts.append(self._unmerge_heads(merge, out))
        if num_global < heads:
            q_b, k_b, v_b = (self._unmerge_heads(merge, x[:, :, num_global:]) for x in (q, k, v))
            parts.append(elfatt(q_b, k_b, v_b, grid, block=config.block, num_global_heads=0, scale=attn.scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return out.reshape(batch, merge.tokens, heads * dim)

    @staticmethod
    def _unmerge_heads(merge: TokenMerge, x: Tensor) -> Tensor:
        """``[B, M, h, d] -> [B, N, h, d]`` through the token unmerge."""
        batch, _, heads, dim = x.shape
        return merge.unmerge(x.reshape(batch, -1, heads * dim)).view(batch, merge.tokens, heads, dim)

    def _cross_attention(self, attn: torch.nn.Module, merged: Tensor, context: Tensor) -> Tensor:
        """Exact attention of the merged queries to the text tokens; ``[B, M, heads * d]``."""
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = self._heads(attn, attn.to_q(merged))
        k, v = (self._heads(attn, proj(context)) for proj in (attn.to_k, attn.to_v))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        return out.transpose(1, 2).flatten(2)
