"""Building a model from its variant config, timm's way, without needing timm.

``build_model`` does what timm's ``build_model_with_cfg`` does for these backbones: merge the pretrained
config, optionally load weights from a local file through the model's checkpoint filter, and wrap the model
for ``features_only=True``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "FeatureInfo",
    "FeatureGetterNet",
    "build_model",
    "feature_take_indices",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

StateDictFilter = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Which stages to return, as timm's ``feature_take_indices``.

    Args:
        num_features: the number of stages.
        indices: None for all, an int ``n`` for the last ``n``, or a sequence of indices (negative from the end).

    Returns:
        The sorted-as-given absolute indices and the largest of them.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices} must be between 1 and the {num_features} stages")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = [num_features + index if index < 0 else index for index in indices]
        if not take or any(not 0 <= index < num_features for index in take):
            raise ValueError(f"indices {list(indices)} must be non-empty and lie in [-{num_features}, {num_features})")
    return take, max(take)


class FeatureInfo(list):
    """A list of ``dict(num_chs, reduction, module)``, one per returned stage, with timm's accessors."""

    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        """Stride of each returned feature map relative to the input (at sizes that divide by it)."""
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        """Name of the module producing each returned feature map."""
        return [info["module"] for info in self]


class FeatureGetterNet(nn.Module):
    """A backbone returning the list of its stage features, built by ``features_only=True``.

    Wraps a model that has ``forward_intermediates`` and ``prune_intermediate_layers``; the stages after the
    last one asked for, the classifier and (unless ``norm``) the final norm are removed.
    """

    def __init__(
        self,
        model: nn.Module,
        out_indices: int | Sequence[int] = (0, 1, 2, 3),
        *,
        output_fmt: str = "NCHW",
        norm: bool = False,
    ) -> None:
        """
        Args:
            model: the full model.
            out_indices: the stages to return (see :func:`feature_take_indices`).
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            norm: apply the final norm to the last stage's features (when it is the model's last stage).
        """
        super().__init__()
        self.feature_info = FeatureInfo(
            copy.deepcopy(model.feature_info[i]) for i in feature_take_indices(len(model.feature_info), out_indices)[0]
        )
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm, prune_head=True)
        self.model = model
        self.output_fmt = output_fmt
        self.norm = norm

    def forward(self, x: Tensor) -> list[Tensor]:
        """Per-stage features of the image batch ``x``, in ``out_indices`` order."""
        return self.model.forward_intermediates(
            x, indices=self.out_indices, norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )


def _load_pretrained(model: nn.Module, cfg: dict[str, Any], filter_fn: StateDictFilter | None) -> None:
    source = cfg.get("file") or cfg.get("state_dict")
    if not source:
        raise RuntimeError(
            f"no pretrained weights are hosted for {cfg.get('architecture')!r}; download a checkpoint and pass "
            "pretrained_cfg_overlay=dict(file='path/to/checkpoint.pth'), or load it with the model file's "
            "checkpoint_filter_fn"
        )
    if isinstance(source, (str, os.PathLike)):
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    else:
        state_dict = source
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    model.load_state_dict(state_dict)


def build_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool,
    default_cfg: dict[str, Any],
    *,
    pretrained_cfg: dict[str, Any] | str | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    pretrained_filter_fn: StateDictFilter | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] = (0, 1, 2, 3),
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for a registered variant, the way timm's ``build_model_with_cfg`` does.

    Args:
        model_cls: the model class.
        variant: the registered name, recorded as ``pretrained_cfg["architecture"]``.
        pretrained: load weights from ``pretrained_cfg["file"]`` (a local path) or ``["state_dict"]``.
        default_cfg: the variant's default pretrained config.
        pretrained_cfg: a dict replacing keys of ``default_cfg``; a string (a timm pretrained tag) is ignored.
        pretrained_cfg_overlay: a dict overriding keys of the merged config (``dict(file=path)``).
        pretrained_filter_fn: maps a foreign checkpoint onto the model (``checkpoint_filter_fn``).
        features_only: return a :class:`FeatureGetterNet` giving the per-stage features.
        out_indices: the stages it returns.
        feature_cfg: extra :class:`FeatureGetterNet` options (``output_fmt``, ``norm``).
        **kwargs: constructor arguments; ``num_classes`` and ``in_chans`` default to the config's.
    """
    # Arguments timm's create_model may pass that concern downloading only.
    kwargs.pop("cache_dir", None)
    cfg = dict(default_cfg)
    if isinstance(pretrained_cfg, dict):
        cfg.update(pretrained_cfg)
    cfg.update(pretrained_cfg_overlay or {})
    cfg["architecture"] = variant
    kwargs.setdefault("num_classes", cfg.get("num_classes", 1000))
    kwargs.setdefault("in_chans", cfg.get("input_size", (3,))[0])
    num_classes = kwargs["num_classes"]
    if pretrained and num_classes != cfg.get("num_classes", num_classes):
        # Load the checkpoint's classifier strictly, then replace it with a fresh one, as timm does.
        model = model_cls(**{**kwargs, "num_classes": cfg["num_classes"]})
        _load_pretrained(model, cfg, pretrained_filter_fn)
        model.reset_classifier(num_classes)
        warnings.warn(
            f"pretrained classifier not loaded: the checkpoint has {cfg['num_classes']} classes, the model "
            f"{num_classes}",
            stacklevel=3,
        )
    else:
        model = model_cls(**kwargs)
        if pretrained:
            _load_pretrained(model, cfg, pretrained_filter_fn)
    model.pretrained_cfg = cfg
    # timm's backwards-compatible alias.
    model.default_cfg = model.pretrained_cfg
    if features_only:
        model = FeatureGetterNet(model, out_indices, **(feature_cfg or {}))
        model.pretrained_cfg = model.default_cfg = cfg
    return model
