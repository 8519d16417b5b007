"""The model registry: ``create_model`` / ``list_models`` without timm, and timm's registry too when timm imports.

Every variant is one function decorated with :func:`register_model`, named as the model is
(``cswin_elfatt_tiny_224``). It always lands in this package's registry; when ``timm`` can be imported it is
also handed to ``timm.models.register_model``, so ``timm.create_model("cswin_elfatt_tiny_224")`` works once
``elfatt.models`` has been imported. timm is never required.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "model_entrypoint", "timm_available"]

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def _find_timm_register() -> Callable[[Callable[..., Any]], Callable[..., Any]] | None:
    """timm's ``register_model``, or None where timm is absent or does not import.

    Any exception is caught, not only ImportError: a timm whose torchvision does not load beside the installed
    torch raises RuntimeError or OSError at import, and that must not break ``elfatt.models``.
    """
    try:
        from timm.models import register_model as timm_register_model
    except Exception:
        return None
    return timm_register_model


_timm_register_model = _find_timm_register()


def timm_available() -> bool:
    """Whether the variants were also registered with timm."""
    return _timm_register_model is not None


def register_model(fn: ModelFn) -> ModelFn:
    """Register a model entrypoint under its function name, here and, when timm imports, with timm.

    timm reads the pretrained config from the ``default_cfgs`` of the function's module at decoration time,
    so a model file defines ``default_cfgs`` before its entrypoints.
    """
    name = fn.__name__
    if name in _model_entrypoints and _model_entrypoints[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _model_entrypoints[name] = fn
    if _timm_register_model is not None:
        _timm_register_model(fn)
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (``"swin_*"``)."""
    return sorted(name for name in _model_entrypoints if fnmatch.fnmatchcase(name, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _model_entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The function that builds the model ``name``.

    Raises:
        ValueError: for an unknown name, with the closest registered names.
    """
    if name not in _model_entrypoints:
        close = difflib.get_close_matches(name, list(_model_entrypoints), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _model_entrypoints[name]


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model, as ``timm.create_model`` does.

    Args:
        name: a registered name, see :func:`list_models`.
        pretrained: load the weights named by the config; none are hosted, so this needs
            ``pretrained_cfg_overlay=dict(file=path)``.
        **kwargs: constructor arguments (``num_classes``, ``drop_path_rate``, ``num_blocks``, ...) and
            ``features_only`` / ``out_indices`` for a backbone returning per-stage features.
    """
    return model_entrypoint(name)(pretrained=pretrained, **kwargs)
