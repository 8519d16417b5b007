"""The peers ELFATT is benchmarked against, one attention mechanism per file, each built from its paper.

Every peer has the same interface: ``Peer(dim, num_heads, *, qkv_bias=False, **options)`` with its own ``qkv``
and ``proj`` linears, and ``forward(x, size)`` taking tokens ``[B, N, C]`` on an ``(H, W)`` grid with
``H * W == N`` and returning ``[B, N, C]``; the shared part lives in :class:`~elfatt_lab.attention._base.QKVAttention`.
:func:`build_peer` makes one by name from :data:`PEERS`.
"""

from __future__ import annotations

from torch import nn

from elfatt_lab.attention.agent import AgentAttention
from elfatt_lab.attention.cswin import CSWinAttention
from elfatt_lab.attention.efficient import EfficientAttention
from elfatt_lab.attention.flatten import FocusedLinearAttention
from elfatt_lab.attention.sdpa import SDPAAttention
from elfatt_lab.attention.swin import SwinWindowAttention
from elfatt_lab.attention.vanilla import VanillaAttention

__all__ = [
    "PEERS",
    "AgentAttention",
    "CSWinAttention",
    "EfficientAttention",
    "FocusedLinearAttention",
    "SDPAAttention",
    "SwinWindowAttention",
    "VanillaAttention",
    "build_peer",
]

PEERS: dict[str, type[nn.Module]] = {
    "vanilla": VanillaAttention,
    "sdpa": SDPAAttention,
    "swin": SwinWindowAttention,
    "cswin": CSWinAttention,
    "efficient": EfficientAttention,
    "flatten": FocusedLinearAttention,
    "agent": AgentAttention,
}


def build_peer(name: str, dim: int, num_heads: int, **kwargs: object) -> nn.Module:
    """Build the peer registered as ``name`` in :data:`PEERS`.

    Args:
        name: the mechanism, one of the keys of :data:`PEERS`.
        dim: channels ``C`` of the tokens.
        num_heads: heads.
        **kwargs: the peer's keyword-only options (``qkv_bias``, ``window_size``, ``split_size``, ...).

    Raises:
        ValueError: ``name`` is not a registered peer.
    """
    if name not in PEERS:
        raise ValueError(f"unknown attention mechanism {name!r}; valid names: {', '.join(sorted(PEERS))}")
    return PEERS[name](dim, num_heads, **kwargs)
