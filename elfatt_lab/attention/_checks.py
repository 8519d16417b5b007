"""Input checks and grid helpers shared by the peer attention modules.

Bad shapes and options raise ``ValueError``; a grid ``size`` that is not a pair of ints raises ``TypeError``
(from :func:`elfatt.ops.checks.check_size`).
"""

from __future__ import annotations

from torch import Tensor

from elfatt.ops.checks import check_key_padding_mask, check_size

__all__ = ["check_heads", "check_tokens", "padding_keep", "window_partition", "window_reverse"]


def check_heads(dim: int, num_heads: int) -> int:
    """Return the head size ``dim // num_heads`` after checking that the heads split ``dim`` evenly."""
    if dim < 1 or num_heads < 1:
        raise ValueError(f"dim and num_heads must be >= 1, got dim={dim}, num_heads={num_heads}")
    if dim % num_heads:
        raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
    return dim // num_heads


def check_tokens(x: Tensor, size: tuple[int, int], dim: int) -> tuple[int, int, int]:
    """Check that ``x`` is ``[B, N, dim]`` with ``N == H * W`` for ``size=(H, W)``; return ``(B, H, W)``.

    Raises:
        TypeError: ``size`` is not a pair of ints.
        ValueError: ``x`` is not ``[B, N, dim]``, the grid is empty, or ``H * W != N``.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have rank 3 [B, N, C], got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"x has {x.shape[-1]} channels, the module was built for dim={dim}")
    height, width = check_size(size)
    if height * width != x.shape[1]:
        raise ValueError(f"grid size {height}x{width}={height * width} does not match the {x.shape[1]} tokens of x")
    return x.shape[0], height, width


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Cut ``x`` ``[B, H, W, C]`` into non-overlapping windows ``[B * nW, wh * ww, C]``, row-major inside each.

    ``H`` and ``W`` must be multiples of the window; windows are ordered row-major over the grid, per image.
    """
    batch, height, width, channels = x.shape
    wh, ww = window
    x = x.reshape(batch, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


def window_reverse(windows: Tensor, window: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Put windows ``[B * nW, wh * ww, C]`` back on their ``[B, H, W, C]`` grid; inverse of :func:`window_partition`."""
    (wh, ww), (height, width) = window, size
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // wh, width // ww, wh, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def padding_keep(key_padding_mask: Tensor, x: Tensor) -> Tensor:
    """``1`` at the real tokens of ``x`` ``[B, N, C]`` and ``0`` at the padded ones, in ``x``'s dtype, after checking
    ``key_padding_mask`` is a bool ``[B, N]`` tensor (True at padded positions)."""
    return (~check_key_padding_mask(key_padding_mask, x)).to(x.dtype)
