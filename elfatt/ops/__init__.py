"""The ELFATT op on the tokens-last layout ``[B, P + H * W, heads, d]``: one implementation, planned once per grid,
registered with ``torch.library``.

- :mod:`~elfatt.ops.interface`: :func:`elfatt`, the public entry, which checks its inputs once;
- :mod:`~elfatt.ops.sequence`: :func:`elfatt_sequence`, ELFATT along token sequences with key padding;
- :mod:`~elfatt.ops.blocks` and :mod:`~elfatt.ops.plan`: block specs, and the cached plan of a grid's blocks;
- :mod:`~elfatt.ops.kernels` and :mod:`~elfatt.ops.attend`: the eager kernels and their composition;
- :mod:`~elfatt.ops.library`: the ``elfatt::attention`` op that ``torch.compile`` keeps opaque;
- :mod:`~elfatt.ops.export_form`: the branch-free graph ``torch.export`` (ONNX) traces;
- :mod:`~elfatt.ops.triton_global`: Triton kernels of the global heads;
- :mod:`~elfatt.ops.reference`: the float64 reference every form is tested against.
"""

from elfatt.ops.blocks import BlockCount, BlockSpec
from elfatt.ops.checks import global_head_count
from elfatt.ops.interface import elfatt
from elfatt.ops.sequence import elfatt_sequence

__all__ = ["BlockCount", "BlockSpec", "elfatt", "elfatt_sequence", "global_head_count"]
