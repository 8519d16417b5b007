"""Every attention mechanism ELFATT is compared with, and ELFATT's own variants and ablations, by name.

One file per mechanism, each written from its paper (cited at its top) and tested against a float64 reference;
:mod:`~elfatt_lab.attention.registry` names them all (:data:`MECHANISMS`, :func:`build_attention`) for the benchmark,
the training experiments and the diffusion evaluation alike. Every layer is built ``build(dim, num_heads)`` and
called ``forward(x [B, N, C], (H, W))``.
"""

from elfatt_lab.attention.block import MechanismBlock
from elfatt_lab.attention.peers import PEERS, build_peer
from elfatt_lab.attention.registry import MECHANISMS, Mechanism, build_attention, check_mechanisms

__all__ = ["MECHANISMS", "PEERS", "Mechanism", "MechanismBlock", "build_attention", "build_peer", "check_mechanisms"]
