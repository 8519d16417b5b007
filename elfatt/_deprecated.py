"""The block keywords of earlier releases (``num_blocks``, ``block_size``, ``block_sizes``), accepted with a
DeprecationWarning until elfatt 0.3: ``block=`` is the one way to give blocks."""

import warnings
from collections.abc import Callable

from elfatt.ops.blocks import BlockCount
from elfatt.ops.checks import pair

__all__ = ["deprecated_block", "count_block"]


def deprecated_block(
    block: object, legacy: dict[str, object], convert: dict[str, Callable[[object], object]] | None = None
) -> object:
    """``block``, or the one deprecated keyword of ``legacy`` (name: value) that was given, converted by
    ``convert[name]`` where there is one, with a DeprecationWarning naming ``block=``. Raises ValueError where
    more than one is given."""
    given = {name: value for name, value in legacy.items() if value is not None}
    if not given:
        return block
    names = ", ".join(f"{name}=" for name in given)
    if block is not None or len(given) > 1:
        raise ValueError(f"give only block= ({names} {'is its' if len(given) == 1 else 'are its'} deprecated spelling)")
    ((name, value),) = given.items()
    warnings.warn(
        f"{name}= is deprecated and will be removed in elfatt 0.3; pass block= (a size, or elfatt.BlockCount(nh, nw) "
        "for a count)",
        DeprecationWarning,
        stacklevel=3,
    )
    return (convert or {}).get(name, lambda same: same)(value)


def count_block(num_blocks: object) -> BlockCount:
    """A deprecated ``num_blocks`` (an int ``n`` or an ``(nh, nw)`` pair) as a :class:`~elfatt.ops.BlockCount`."""
    return BlockCount(*pair(num_blocks, "num_blocks"))
