"""What timm's model contract asks of every ELFATT backbone, written once: the init, a fresh classifier, feature
indices, the pretrained config, the builder of the four-stage variants."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import Tensor

from elfatt.models._blocks import ELFATTBlock
from elfatt.ops.blocks import BlockCount

__all__ = [
    "per_stage",
    "init_weights",
    "new_classifier",
    "stage_indices",
    "check_output_fmt",
    "elfatt_cfg",
    "build_hierarchical",
    "ELFATTBackbone",
]


def init_weights(module: nn.Module) -> None:
    """timm's init of linears (truncated normal 0.02, zero bias) and LayerNorms (ones, zeros)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_classes(num_classes: object) -> None:
    """Raise ValueError unless ``num_classes`` is an int >= 0."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0 for no classifier head), got {num_classes!r}")


def check_build_args(kwargs: dict[str, Any], levels: int, level_name: str) -> None:
    """Check a variant's ``num_classes``, ``in_chans`` and ``out_indices`` before anything is built, so that a bad
    one is named here rather than failing deep in a forward: ``out_indices`` is an int ``n`` (the last ``n`` of the
    ``levels`` feature levels) or distinct indices in ``[-levels, levels)``, as ``feature_info`` then lists them."""
    if "num_classes" in kwargs:
        check_classes(kwargs["num_classes"])
    in_chans = kwargs.get("in_chans", 3)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1 (image channels), got {in_chans!r}")
    out_indices = kwargs.get("out_indices")
    if out_indices is None:
        return
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= levels:
            raise ValueError(f"out_indices={out_indices} asks for the last {out_indices} of {levels} {level_name}s")
        return
    indices = tuple(out_indices)
    valid = all(isinstance(i, int) and not isinstance(i, bool) and -levels <= i < levels for i in indices)
    if not indices or not valid:
        raise ValueError(
            f"out_indices {indices} out of range: the model has {levels} {level_name}s, indices 0 to {levels - 1} "
            f"(or -{levels} to -1)"
        )
    if len({i % levels for i in indices}) != len(indices):
        raise ValueError(f"out_indices {indices} names a {level_name} twice; each feature map is returned once")


def new_classifier(num_features: int, num_classes: int, model: nn.Module) -> nn.Module:
    """A freshly initialised linear head (``nn.Identity`` for 0 classes) with the model's device, dtype and mode."""
    check_classes(num_classes)
    if num_classes == 0:
        return nn.Identity().train(model.training)
    reference = next(model.parameters(), None)
    factory = {} if reference is None else dict(device=reference.device, dtype=reference.dtype)
    head = nn.Linear(num_features, num_classes, **factory)
    init_weights(head)
    return head.train(model.training)


def stage_indices(num_features: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``, with a ``ValueError`` (not an assert) for indices out of range."""
    try:
        return feature_take_indices(num_features, indices)
    except AssertionError as error:
        raise ValueError(f"indices {indices!r}: {error}") from None


def check_output_fmt(output_fmt: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError unless ``output_fmt`` is one of ``allowed`` (``forward_intermediates``' formats)."""
    if output_fmt not in allowed:
        choices = ", ".join(repr(fmt) for fmt in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise ValueError(f"output_fmt must be {choices}, got {output_fmt!r}")


def elfatt_cfg(**kwargs: Any) -> dict[str, Any]:
    """timm's pretrained config of an ELFATT variant at 224 (no weights to download), updated by ``kwargs``."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2501.06098",
        "paper_name": "ELFATT: Efficient Linear Fast Attention for Vision Transformers",
        "origin_url": "https://github.com/Alicewithrabbit/ELFTEST",
        **kwargs,
    }


def build_hierarchical(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    args: dict[str, Any],
    kwargs: dict[str, Any],
    pretrained_filter_fn: Callable[..., dict[str, Tensor]] | None = None,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a four-stage variant: its ``args`` overridden by the caller's
    ``kwargs`` (a caller's blocks, in any spelling, replace the variant's), features from every stage."""
    if any(kwargs.get(name) is not None for name in ("num_blocks", "block_sizes")):
        args = {k: v for k, v in args.items() if k != "block"}
    kwargs = {**args, **kwargs}
    check_build_args(kwargs, 4, "stage")
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


class MapRequest(NamedTuple):
    """Which intermediate maps ``forward_intermediates`` returns, and how (its arguments, checked)."""

    take_indices: list[int]
    norm: bool
    output_fmt: str
    return_prefix_tokens: bool


class ELFATTBackbone(nn.Module):
    """The part of timm's model contract every ELFATT backbone shares: the classifier, ``forward``,
    ``forward_intermediates`` and ``prune_intermediate_layers``.

    A subclass builds ``head``, ``norm``, ``num_features``, ``num_classes`` and ``global_pool``, names the module
    list its features come from (:attr:`trunk_name`), the pools and formats it takes, and writes
    ``forward_features``, ``forward_head`` and :meth:`collect_intermediates`.
    """

    trunk_name = "stages"
    global_pools: tuple[str, ...] = ("avg", "")
    output_fmts: tuple[str, ...] = ("NCHW", "NHWC")
    # A hierarchical model's final norm fits only its last stage's channels.
    norm_fits_last_only = True

    def check_pool(self, global_pool: str) -> None:
        """Raise ValueError unless this model can pool its features as ``global_pool``."""
        if global_pool not in self.global_pools:
            choices = ", ".join(repr(pool) for pool in self.global_pools[:-1]) + f" or {self.global_pools[-1]!r}"
            raise ValueError(f"global_pool must be {choices}, got {global_pool!r}")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (``torch.utils.checkpoint``) to save memory."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, ELFATTBlock):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (0 for none), optionally changing the pool."""
        if global_pool is not None:
            self.check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_classifier(self.num_features, num_classes, self)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """Per-stage (per-block for a ViT) feature maps, timm's ``forward_intermediates``.

        Args:
            x: images ``[B, in_chans, H, W]``.
            indices: stages to return: None for all, ``n`` for the last ``n``, or a list of indices.
            norm: apply the final norm to the returned maps (a hierarchical model's only to its last stage's).
            stop_early: accepted for timm's signature; with ``intermediates_only`` the stages after the last one
                asked for never run, without it all run so that the final features are complete.
            output_fmt: ``"NCHW"`` or ``"NHWC"``, and for a ViT ``"NLC"`` (``[B, h * w, C]``).
            intermediates_only: return only the list of maps.
            return_prefix_tokens: a ViT's maps as ``(map, prefix tokens [B, P, C])`` pairs.

        Returns:
            The maps, or ``(final features, maps)``: a hierarchical model's ``[B, C, h, w]``, a ViT's normalised
            tokens ``[B, P + h * w, C]``.
        """
        check_output_fmt(output_fmt, self.output_fmts)
        trunk = getattr(self, self.trunk_name)
        take_indices, max_index = stage_indices(len(trunk), indices)
        if stop_early or intermediates_only:
            trunk = trunk[: max_index + 1]
        request = MapRequest(take_indices, norm, output_fmt, return_prefix_tokens)
        last, intermediates = self.collect_intermediates(x, trunk, request)
        return intermediates if intermediates_only else (self.norm(last), intermediates)

    def collect_intermediates(self, x: Tensor, trunk: nn.Module, request: MapRequest) -> tuple[Tensor, list[Any]]:
        """Run ``trunk`` on images ``x``; return its last output (before the final norm) and the maps ``request``
        asks for."""
        raise NotImplementedError

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` and, optionally, the final norm and the head.

        A hierarchical model's final norm is dropped whenever stages are, since it fits only the last stage.
        """
        trunk = getattr(self, self.trunk_name)
        take_indices, max_index = stage_indices(len(trunk), indices)
        if self.norm_fits_last_only and max_index < len(trunk) - 1:
            prune_norm = True
        setattr(self, self.trunk_name, trunk[: max_index + 1])
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def per_stage(value: Any, num_stages: int, what: str) -> list[Any]:
    """``value`` for each stage: a list or tuple of ``num_stages`` entries is per stage, anything else (a scalar,
    a ``BlockCount``, or a block pair when there are not two stages) is repeated for every stage."""
    if isinstance(value, BlockCount):
        return [value] * num_stages
    if isinstance(value, (list, tuple)) and len(value) == num_stages:
        return list(value)
    if isinstance(value, (list, tuple)) and not (len(value) == 2 and _is_pair(value)):
        raise ValueError(f"{what} needs one entry per stage ({num_stages}) or one for all, got {value!r}")
    return [value] * num_stages


def _is_pair(value: Sequence[Any]) -> bool:
    return all(side is None or (isinstance(side, int) and not isinstance(side, bool)) for side in value)
