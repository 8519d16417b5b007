"""The checks of the op's public entry, each rule in one place; the kernels behind it trust their inputs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_block_length",
    "check_dropout",
    "check_global_heads",
    "check_inputs",
    "check_key_padding_mask",
    "check_lepe",
    "check_size",
    "global_head_count",
    "half_split",
    "pair",
]


def check_size(size: object) -> tuple[int, int]:
    """``size`` as ``(H, W)`` after checking it is two integers >= 1 (``torch.SymInt`` sides while tracing)."""
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"size must be a (H, W) pair of ints, got {size!r}")
    for name, side in zip("HW", size, strict=True):
        if isinstance(side, bool) or not isinstance(side, (int, torch.SymInt)):
            raise TypeError(f"size must be a (H, W) pair of ints, got {name}={side!r} in {size!r}")
        if isinstance(side, torch.SymInt):
            torch._check(side >= 1, lambda name=name: f"the token grid is empty: {name} must be >= 1")
        elif side < 1:
            raise ValueError(f"the token grid is empty: size={tuple(size)}; H and W must be >= 1")
    return size[0], size[1]


def check_inputs(q: object, k: object, v: object, size: object, prefix: object) -> tuple[int, int]:
    """Check ``q, k, v`` are floating ``[B, P + H * W, heads, d]`` tensors (``v`` may have its own ``d``) on one
    device in one dtype, ``P = prefix`` an int >= 0; returns ``(H, W)``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have rank 4 [B, tokens, heads, d], got shape {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v must be [B, tokens, heads, d] with the same first three dims (and q, k the same d), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {prefix!r}")
    height, width = check_size(size)
    tokens = q.shape[1]
    if isinstance(height * width + prefix, torch.SymInt) or isinstance(tokens, torch.SymInt):
        torch._check(height * width + prefix == tokens, lambda: "the grid size does not match the tokens")
    elif height * width + prefix != tokens:
        grid = f"grid size {height}x{width}={height * width}"
        if prefix:
            grid = f"{prefix} prefix tokens and a {height}x{width} grid make {prefix + height * width} tokens, which"
        raise ValueError(f"{grid} does not match the {tokens} tokens of q (shape {tuple(q.shape)})")
    return height, width


def check_lepe(lepe: object, channels: int, part: str) -> tuple[Tensor, Tensor | None] | None:
    """Check a part's LePE ``(weight, bias)``: a depthwise ``[channels, 1, kh, kw]`` kernel with odd sides and a
    ``[channels]`` bias or None."""
    if lepe is None:
        return None
    if not isinstance(lepe, (tuple, list)) or len(lepe) != 2:
        raise TypeError(f"{part} must be a (weight, bias) pair or None, got {type(lepe).__name__}")
    weight, bias = lepe
    if not isinstance(weight, Tensor) or weight.dim() != 4 or tuple(weight.shape[:2]) != (channels, 1):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{part} weight must be a depthwise kernel [heads * d = {channels}, 1, kh, kw], got {shape}")
    if weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        raise ValueError(f"{part} kernel sides must be odd so the output stays on the grid, got {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (channels,)):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{part} bias must have shape ({channels},), got {shape}")
    return weight, bias


def check_global_heads(num_global_heads: object, heads: int) -> int:
    """How many of ``heads`` heads are global: ``num_global_heads`` after checking it is an int in ``[0, heads]``, or
    half of them (rounded down) for None."""
    num_global = heads // 2 if num_global_heads is None else num_global_heads
    if isinstance(num_global, bool) or not isinstance(num_global, int) or not 0 <= num_global <= heads:
        raise ValueError(f"num_global_heads must be an int in [0, {heads}], got {num_global_heads!r}")
    return num_global


def check_dropout(dropout_p: float) -> None:
    """Raise ValueError unless ``0 <= dropout_p < 1``."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p}")


def check_block_length(block: object, length: int) -> int:
    """A sequence's block length: ``block`` after checking it is an int >= 1, clipped to the ``length`` tokens."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1 (tokens per block), got {block!r}")
    return min(block, max(length, 1))


def check_key_padding_mask(mask: object, q: Tensor) -> Tensor:
    """Check a key-padding mask is a bool ``[B, L]`` tensor on ``q``'s device, ``q`` being ``[B, L, heads, d]``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"key_padding_mask must be a bool tensor [B, L] or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True at padded positions), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(q.shape[:2]):
        raise ValueError(f"key_padding_mask must be [B, L] = {tuple(q.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != q.device:
        raise ValueError(f"key_padding_mask is on {mask.device}, q on {q.device}")
    return mask


def half_split(num_heads: int) -> float:
    """The ``split`` that makes half of ``num_heads`` global heads, rounded down for an odd count (1 of 3)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    return (num_heads // 2) / num_heads


def global_head_count(num_heads: int, split: float, *, round_down: bool = False) -> int:
    """How many of ``num_heads`` heads are global linear heads for a ``split`` fraction in ``[0, 1]``: the one rule
    every part of the library splits heads by.

    Args:
        num_heads: heads of the layer.
        split: fraction of global linear heads.
        round_down: take ``floor(num_heads * split)`` where it is not whole (pretrained layers whose head count is
            fixed, as the diffusion patch's); otherwise a fraction raises.

    Raises:
        ValueError: if ``split`` is outside ``[0, 1]``, or ``num_heads * split`` is not whole and not ``round_down``.
    """
    if not 0.0 <= split <= 1.0:
        raise ValueError(f"split is the fraction of global linear heads and must lie in [0, 1], got {split}")
    count = num_heads * split
    if abs(count - round(count)) <= 1e-9:
        return round(count)
    if round_down:
        return int(count)
    raise ValueError(
        f"{num_heads} heads cannot be split {split}: {num_heads} * {split} = {count:g} global heads is not a "
        f"whole number; choose split as a multiple of 1/{num_heads}"
    )


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``value`` (an int for both sides, or two) as a ``(height, width)`` pair of ints >= 1."""
    height, width = (value, value) if isinstance(value, int) else tuple(value)
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(height), int(width)
