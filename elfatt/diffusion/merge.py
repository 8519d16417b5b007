"""Token merging on a 2-D grid by bipartite soft matching, as in ToMe for Stable Diffusion.

"Token Merging for Fast Stable Diffusion", Bolya & Hoffman, CVPR Workshops 2023, https://arxiv.org/abs/2303.17604
(and ToMe, Bolya et al., ICLR 2023). The grid is cut into ``sy x sx`` cells; one token per cell is a destination,
the others are sources. Each source is matched to its most similar destination (cosine similarity of the
metric), and the ``r`` best-matched sources are averaged into their destinations. Written here rather than taken
from the ``tomesd`` package, which applies itself by swapping diffusers' block classes and is not needed for the
matching alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TokenMerge", "bipartite_soft_matching_2d"]


@dataclass(frozen=True)
class TokenMerge:
    """A merge of ``[B, N, C]`` tokens to ``[B, N - r, C]`` and its unmerge back to ``N`` tokens.

    Merged tokens are ordered: the unmerged sources first, then all destinations.
    """

    src_indices: Tensor  # [1, N_src, 1] grid positions of the sources
    dst_indices: Tensor  # [1, N_dst, 1] grid positions of the destinations
    unmerged: Tensor  # [B, N_src - r, 1] which sources stay, indices into the sources
    merged: Tensor  # [B, r, 1] which sources are merged
    targets: Tensor  # [B, r, 1] the destination of each merged source
    tokens: int

    def merge(self, x: Tensor) -> Tensor:
        """``[B, N, C] -> [B, N - r, C]``: merged sources are averaged into their destinations."""
        channels = x.shape[-1]
        src = x.gather(1, self.src_indices.expand(x.shape[0], -1, channels))
        dst = x.gather(1, self.dst_indices.expand(x.shape[0], -1, channels))
        kept = src.gather(1, self.unmerged.expand(-1, -1, channels))
        moving = src.gather(1, self.merged.expand(-1, -1, channels))
        dst = dst.scatter_reduce(1, self.targets.expand(-1, -1, channels), moving, reduce="mean", include_self=True)
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, x: Tensor) -> Tensor:
        """``[B, N - r, C] -> [B, N, C]``: every merged source takes its destination's value."""
        batch, _, channels = x.shape
        num_kept = self.unmerged.shape[1]
        kept, dst = x[:, :num_kept], x[:, num_kept:]
        out = x.new_zeros(batch, self.tokens, channels)
        src_positions = self.src_indices.expand(batch, -1, -1)
        out.scatter_(1, self.dst_indices.expand(batch, -1, channels), dst)
        out.scatter_(1, src_positions.gather(1, self.unmerged).expand(-1, -1, channels), kept)
        merged_values = dst.gather(1, self.targets.expand(-1, -1, channels))
        out.scatter_(1, src_positions.gather(1, self.merged).expand(-1, -1, channels), merged_values)
        return out


def _destination_mask(size: tuple[int, int], sy: int, sx: int, generator: torch.Generator | None) -> Tensor:
    """``[H * W]`` bool, True at one token per whole ``sy x sx`` cell (random, or the cell's first without a
    generator); tokens of cells cut off by the grid's edge are all sources."""
    height, width = size
    cells_h, cells_w = height // sy, width // sx
    if generator is None:
        choice = torch.zeros(cells_h, cells_w, dtype=torch.long)
    else:
        choice = torch.randint(sy * sx, (cells_h, cells_w), generator=generator)
    cell_mask = torch.zeros(cells_h, cells_w, sy * sx, dtype=torch.bool)
    cell_mask.scatter_(2, choice[..., None], True)
    grid_mask = torch.zeros(height, width, dtype=torch.bool)
    grid_mask[: cells_h * sy, : cells_w * sx] = (
        cell_mask.reshape(cells_h, cells_w, sy, sx).transpose(1, 2).reshape(cells_h * sy, cells_w * sx)
    )
    return grid_mask.flatten()


def bipartite_soft_matching_2d(
    metric: Tensor,
    size: tuple[int, int],
    ratio: float,
    *,
    sx: int = 2,
    sy: int = 2,
    generator: torch.Generator | None = None,
) -> TokenMerge:
    """Plan a merge of ``int(ratio * N)`` tokens (ToMe-SD's count; at most all sources) of ``metric`` ``[B, N, C]``
    on ``size``.

    Args:
        metric: the tokens whose cosine similarity decides the matching.
        size: the grid ``(H, W)``, ``H * W == N``.
        ratio: fraction of all tokens to merge away, in ``[0, 1)``.
        sx, sy: cell size; one destination per cell.
        generator: draws the destination of each cell (CPU generator); None takes each cell's first token.
    """
    batch, tokens, _ = metric.shape
    if size[0] * size[1] != tokens:
        raise ValueError(f"grid {size[0]}x{size[1]} does not match the {tokens} tokens")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"merge ratio must lie in [0, 1), got {ratio}")
    is_dst = _destination_mask(size, sy, sx, generator).to(metric.device)
    dst_indices = is_dst.nonzero()[:, 0].reshape(1, -1, 1)
    src_indices = (~is_dst).nonzero()[:, 0].reshape(1, -1, 1)
    r = min(int(ratio * tokens), src_indices.shape[1]) if dst_indices.shape[1] else 0
    with torch.no_grad():
        normed = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        src = normed.gather(1, src_indices.expand(batch, -1, normed.shape[-1]))
        dst = normed.gather(1, dst_indices.expand(batch, -1, normed.shape[-1]))
        if dst.shape[1]:
            best_score, best_dst = (src @ dst.transpose(1, 2)).max(dim=-1)
        else:
            best_score = best_dst = torch.zeros(batch, src.shape[1], dtype=torch.long, device=metric.device)
        order = best_score.argsort(dim=-1, descending=True)[..., None]
    merged = order[:, :r]
    return TokenMerge(
        src_indices=src_indices,
        dst_indices=dst_indices,
        unmerged=order[:, r:],
        merged=merged,
        targets=best_dst[..., None].gather(1, merged),
        tokens=tokens,
    )
