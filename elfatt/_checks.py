"""Input validation shared by the functional ops: every check raises a message that names the problem."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_size", "check_heads_tensor", "check_tokens", "check_qkv", "pair", "is_symbolic"]


def is_symbolic(value: object) -> bool:
    """Whether ``value`` is a traced size, a ``torch.SymInt``."""
    return isinstance(value, torch.SymInt)


def check_size(size: object) -> tuple[int, int]:
    """Return ``size`` as ``(H, W)`` after checking it is two positive integers.

    A side may be a ``torch.SymInt`` (a size traced by ``torch.compile`` or ``torch.export``); its checks become
    assertions in the graph (``torch._check``) rather than branches that would fix the size.
    """
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"size must be a (H, W) pair of ints, got {size!r}")
    height, width = size
    for name, side in (("H", height), ("W", width)):
        if isinstance(side, bool) or not isinstance(side, (int, torch.SymInt)):
            raise TypeError(f"size must be a (H, W) pair of ints, got {name}={side!r} in {size!r}")
    if is_symbolic(height) or is_symbolic(width):
        torch._check(height >= 1, lambda: "the token grid is empty: H must be >= 1")
        torch._check(width >= 1, lambda: "the token grid is empty: W must be >= 1")
        return height, width
    if height < 1 or width < 1:
        raise ValueError(f"the token grid is empty: size={tuple(size)}; H and W must be >= 1")
    return height, width


def check_heads_tensor(x: object, name: str = "x") -> None:
    """Check that ``x`` is a floating tensor of rank 4, ``[B, heads, N, d]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4 [B, heads, N, d], got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")


def check_tokens(x: Tensor, size: object, name: str = "x") -> tuple[int, int]:
    """Check that ``x`` is a floating ``[B, heads, N, d]`` tensor laid out on the grid ``size``."""
    check_heads_tensor(x, name)
    height, width = check_size(size)
    if is_symbolic(height * width) or is_symbolic(x.shape[2]):
        torch._check(height * width == x.shape[2], lambda: f"the grid size does not match the tokens of {name}")
    elif height * width != x.shape[2]:
        raise ValueError(
            f"grid size {height}x{width}={height * width} does not match the {x.shape[2]} tokens of {name} "
            f"(shape {tuple(x.shape)})"
        )
    return height, width


def check_qkv(q: Tensor, k: Tensor, v: Tensor, size: object | None = None) -> None:
    """Check q, k, v share batch, heads and tokens, q and k share the head dim, and all share dtype and device.

    With ``size``, also check that the tokens lie on that grid.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if size is None:
            check_heads_tensor(x, name)
        else:
            check_tokens(x, size, name)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must match q in [B, heads, N], got v {tuple(v.shape)} and q {tuple(q.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """Return ``value`` (an int for both sides, or two) as a ``(height, width)`` pair of positive ints."""
    height, width = (value, value) if isinstance(value, int) else tuple(value)
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(height), int(width)
