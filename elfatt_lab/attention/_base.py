"""The projections every peer shares: one ``qkv`` linear in, one ``proj`` linear out, and the head reshapes."""

from __future__ import annotations

from torch import Tensor, nn

from elfatt.modules import LePE
from elfatt_lab.attention._checks import check_heads, check_tokens, padding_keep

__all__ = ["QKVAttention"]


class QKVAttention(nn.Module):
    """Base of the peers: ``qkv`` (``C -> 3C``) and ``proj`` (``C -> C``) linears, plus head split and merge.

    Subclasses add their own parameters after ``super().__init__``. A mechanism that attends over all tokens
    per head only writes :meth:`attend`; the others override :meth:`forward`.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = False, lepe: bool = False) -> None:
        """
        Args:
            dim: channels ``C`` of the tokens.
            num_heads: heads; must divide ``dim``.
            qkv_bias: add a bias to the q, k, v projection.
            lepe: add CSWin's LePE (a 3x3 depthwise conv of V on the token grid) to the attention output, the
                positional help ELFATT's heads have, so that a comparison gives every mechanism the same; only for
                mechanisms that write :meth:`attend`.
        """
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = LePE(dim) if lepe else None
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens ``[..., C]`` to q, k, v, each ``[..., C]`` with all heads side by side."""
        q, k, v = self.qkv(x).reshape(*x.shape[:-1], 3, self.dim).unbind(-2)
        return q, k, v

    def split_heads(self, x: Tensor) -> Tensor:
        """``[..., N, h * d] -> [..., h, N, d]`` for ``d = head_dim``; ``h`` is however many heads ``x`` holds."""
        return x.reshape(*x.shape[:-1], -1, self.head_dim).transpose(-3, -2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """``[..., h, N, d] -> [..., N, h * d]``, the inverse of :meth:`split_heads`."""
        return x.transpose(-3, -2).flatten(-2)

    def split_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens ``[..., N, C]`` to q, k, v, each split into heads ``[..., heads, N, d]``."""
        q, k, v = (self.split_heads(t) for t in self.project_qkv(x))
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """The mechanism on q, k, v ``[B, heads, N, d]``, returning ``[B, heads, N, d]``; used by :meth:`forward`.
        ``key_padding_mask`` (``[B, N]``, True at padded keys; ``v`` is zero there) leaves padded keys out."""
        raise NotImplementedError(f"{type(self).__name__} must implement attend() or override forward()")

    def forward(self, x: Tensor, size: tuple[int, int], key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend over all tokens of ``x`` ``[B, N, C]`` on the grid ``size=(H, W)``; returns ``[B, N, C]``.

        ``key_padding_mask`` ``[B, N]`` (bool, True at padded positions): padded tokens are left out as keys, as
        values (zero for LePE too) and their outputs are zero, as :func:`elfatt.ops.elfatt_sequence` does.
        """
        check_tokens(x, size, self.dim)
        q, k, v = self.split_qkv(x)
        keep = None if key_padding_mask is None else padding_keep(key_padding_mask, x)
        if keep is not None:
            v = v * keep[:, None, :, None]
        out = self.merge_heads(self.attend(q, k, v, key_padding_mask))
        if self.lepe is not None:
            out = out + self.lepe(self.merge_heads(v), size)
        return self.proj(out if keep is None else out * keep[..., None])
