"""Kernel backends of the global linear part: ``"torch"`` (always there), ``"triton"`` (the ``triton`` extra).

``"auto"`` picks Triton for CUDA tensors (float32 and narrower) when Triton is installed, PyTorch otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["BACKENDS", "triton_available", "resolve_backend", "triton_global_linear_attention"]

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, x: Tensor) -> str:
    """``"torch"`` or ``"triton"`` for a tensor on ``x``'s device; raises ValueError naming what is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if x.is_cuda and x.dtype != torch.float64 and triton_available() else "torch"
    if backend == "triton":
        if x.dtype == torch.float64:
            raise ValueError("backend='triton' computes in float32; float64 inputs run with backend='torch' or 'auto'")
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package: pip install 'elfatt[triton]'")
        if not (x.is_cuda or _interpreting()):
            raise ValueError(
                f"backend='triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {x.device}"
            )
    return backend


def triton_global_linear_attention() -> Callable[..., Tensor]:
    """The Triton implementation, imported on first use so that ``import elfatt`` never imports Triton."""
    from elfatt.ops.triton_global import global_linear_attention_triton

    return global_linear_attention_triton
