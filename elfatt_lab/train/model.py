"""The small transformer the experiments compare attention mechanisms in: same layers, only attention differs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from elfatt.modules import ELFATTAttention
from elfatt_lab.attention import MECHANISMS, MechanismBlock
from elfatt_lab.attention.registry import build_attention, takes_key_padding_mask
from elfatt_lab.train.tasks import Task

__all__ = ["POOLS", "SmallTransformer", "build_model"]

POOLS = ("mean", "max")


class SmallTransformer(nn.Module):
    """Tokens on a grid (image patches, or a ``(1, L)`` row of token ids), learned position embedding, pre-norm
    blocks with the chosen attention mechanism, mean or max pooling over tokens, a linear head.

    Where the task pads its sequences (``task.pad_id``), padded tokens are left out of attention (the mechanism's
    ``key_padding_mask``) and of the pooling."""

    def __init__(
        self,
        task: Task,
        mechanism: str,
        *,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        patch: int = 1,
        pool: str = "mean",
        block: int = 0,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")
        self.pool = pool
        if task.kind == "image":
            if task.image_size % patch:
                raise ValueError(f"image size {task.image_size} is not a multiple of the patch {patch}")
            side = task.image_size // patch
            self.grid = (side, side)
            self.embed: nn.Module = nn.Conv2d(task.channels, dim, patch, stride=patch)
        else:
            self.grid = (1, task.seq_len)
            self.embed = nn.Embedding(task.vocab_size, dim)
        self.kind = task.kind
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.blocks = nn.ModuleList(MechanismBlock(dim, heads, mechanism, mlp_ratio=2.0) for _ in range(depth))
        if block:
            for layer in self.modules():
                if isinstance(layer, ELFATTAttention):
                    layer.block = (1, block) if task.kind == "tokens" else block
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, task.num_classes)
        self.pad_id = task.pad_id
        if self.pad_id is not None and not takes_key_padding_mask(self.blocks[0].attn):
            taking = [name for name in MECHANISMS if takes_key_padding_mask(build_attention(name, dim, heads))]
            raise ValueError(
                f"{mechanism} cannot leave the padding of {task.name}'s sequences out of attention; choose from "
                f"{', '.join(taking)}"
            )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position embedding and relative-position bias tables (Swin's), which weight decay would pull to 0."""
        names = {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}
        return names | {"pos_embed"}

    def forward(self, x: Tensor) -> Tensor:
        pad = None if self.pad_id is None else x == self.pad_id
        x = self.embed(x).flatten(2).transpose(1, 2) if self.kind == "image" else self.embed(x)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, self.grid, key_padding_mask=pad)
        x = self.norm(x)
        if pad is None:
            return self.head(x.mean(dim=1) if self.pool == "mean" else x.amax(dim=1))
        keep = (~pad)[..., None]
        if self.pool == "mean":
            return self.head((x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1))
        return self.head(x.masked_fill(~keep, torch.finfo(x.dtype).min).amax(dim=1))


def build_model(
    name: str, task: Task, *, dim: int, depth: int, heads: int, patch: int, pool: str = "mean", block: int = 0
) -> nn.Module:
    """A registered backbone (``swin_elfatt_tiny_224``, ...) for image tasks, or the small transformer with the
    attention mechanism ``name`` (``vanilla``, ``elfatt``, ``elfatt-window``, ``elfatt-linear``, ``efficient``, ...);
    ``dim``, ``depth``, ``heads``, ``patch``, ``pool`` and ``block`` (its ELFATT layers' blocks: tokens along a
    sequence, or a square side; 0 keeps the mechanism's) shape the small transformer only."""
    if name in MECHANISMS:
        return SmallTransformer(task, name, dim=dim, depth=depth, heads=heads, patch=patch, pool=pool, block=block)
    from elfatt.models import create_model, is_model

    if not is_model(name):
        raise ValueError(f"unknown model {name!r}: an attention mechanism ({', '.join(MECHANISMS)}) or a backbone")
    if task.kind != "image":
        raise ValueError(f"{name} is an image backbone; task {task.name} is a token sequence")
    return create_model(name, num_classes=task.num_classes, in_chans=task.channels)
