"""The small transformer the experiments compare attention mechanisms in: same layers, only attention differs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from elfatt_lab.attention import MECHANISMS, MechanismBlock
from elfatt_lab.train.tasks import Task

__all__ = ["POOLS", "SmallTransformer", "build_model"]

POOLS = ("mean", "max")


class SmallTransformer(nn.Module):
    """Tokens on a grid (image patches, or a ``(1, L)`` row of token ids), learned position embedding, pre-norm
    blocks with the chosen attention mechanism, mean or max pooling over tokens, a linear head."""

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
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, task.num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position embedding and relative-position bias tables (Swin's), which weight decay would pull to 0."""
        names = {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}
        return names | {"pos_embed"}

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) if self.kind == "image" else self.embed(x)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, self.grid)
        x = self.norm(x)
        return self.head(x.mean(dim=1) if self.pool == "mean" else x.amax(dim=1))


def build_model(
    name: str, task: Task, *, dim: int, depth: int, heads: int, patch: int, pool: str = "mean"
) -> nn.Module:
    """A registered backbone (``swin_elfatt_tiny_224``, ...) for image tasks, or the small transformer with the
    attention mechanism ``name`` (``vanilla``, ``elfatt``, ``elfatt-window``, ``elfatt-linear``, ``efficient``, ...);
    ``dim``, ``depth``, ``heads``, ``patch`` and ``pool`` shape the small transformer only."""
    if name in MECHANISMS:
        return SmallTransformer(task, name, dim=dim, depth=depth, heads=heads, patch=patch, pool=pool)
    from elfatt.models import create_model, is_model

    if not is_model(name):
        raise ValueError(f"unknown model {name!r}: an attention mechanism ({', '.join(MECHANISMS)}) or a backbone")
    if task.kind != "image":
        raise ValueError(f"{name} is an image backbone; task {task.name} is a token sequence")
    return create_model(name, num_classes=task.num_classes, in_chans=task.channels)
