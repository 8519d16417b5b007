"""Registering the backbones with timm once timm is imported, so ``import elfatt`` never imports timm itself.

``import timm`` costs about three seconds here, more than torch, and the core (op, module) does not need it. So
``import elfatt`` only watches for timm: where timm is already imported, the backbones register at once; otherwise
a finder on ``sys.meta_path`` waits for ``import timm`` and, right after timm has finished loading, imports
``elfatt.models``, which registers every variant with timm's registry.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["register_when_timm_imports"]


def _register_models() -> None:
    try:
        import elfatt.models  # noqa: F401
    except Exception as error:  # a broken timm or torchvision must not break the user's own import of timm
        warnings.warn(f"elfatt could not register its models with timm: {error}", stacklevel=3)


class _RegisterAfterExec(importlib.abc.Loader):
    """timm's own loader, followed by the registration once the ``timm`` module has been executed."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        _register_models()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _TimmWatcher(importlib.abc.MetaPathFinder):
    """Finds ``timm`` with the other finders and wraps its loader; removes itself at the first look-up."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def register_when_timm_imports() -> None:
    """Register the backbones with timm now if timm is imported, else as soon as it is."""
    timm = sys.modules.get("timm")
    if timm is not None and getattr(timm, "__spec__", None) is not None and hasattr(timm, "create_model"):
        _register_models()
    elif not any(isinstance(finder, _TimmWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmWatcher())
