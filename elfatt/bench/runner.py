"""The benchmark sweep: every (level, size, mechanism, pass) cell measured in one run, ratios computed after."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from elfatt.attention import MECHANISMS, build_attention, check_mechanisms
from elfatt.bench.backbone_models import build_backbone, check_backbones, default_backbones
from elfatt.bench.measure import count_flops, earlier_objects_out_of_collection, peak_memory_mib, time_call
from elfatt.bench.models import VIT_LAYOUTS, AttentionViT, check_resolution

__all__ = [
    "BenchConfig",
    "Cell",
    "Row",
    "plan_cells",
    "build_cell",
    "cell_step",
    "run_cell",
    "add_ratios",
    "DTYPES",
    "DEFAULT_BENCH_MECHANISMS",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Every registered mechanism but the ablations and variants, which are asked for by name.
DEFAULT_BENCH_MECHANISMS = tuple(name for name, mechanism in MECHANISMS.items() if not mechanism.variant)
PASSES = ("fwd", "fwd+bwd")


@dataclass
class BenchConfig:
    """What to run. Defaults finish in a few minutes on 2 CPU cores."""

    levels: tuple[str, ...] = ("op", "model")
    mechanisms: tuple[str, ...] = DEFAULT_BENCH_MECHANISMS
    backbones: tuple[str, ...] = field(default_factory=default_backbones)
    sides: tuple[int, ...] = (16, 32, 64, 96, 128)
    resolutions: tuple[int, ...] = (224, 384, 512, 768)
    dim: int = 128
    heads: int = 4
    layout: str = "vit_small"
    batch: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    compile: bool = False
    warmup: int = 1
    repeats: int = 5
    repeat_budget_s: float = 5.0
    cell_budget_s: float = 20.0
    passes: tuple[str, ...] = PASSES
    model_passes: tuple[str, ...] = ("fwd",)
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError with a one-line message on any option that cannot run."""
        check_mechanisms(self.mechanisms)
        check_backbones(self.backbones)
        for level in self.levels:
            if level not in ("op", "model"):
                raise ValueError(f"unknown level {level!r}; choose op and/or model")
        for name in (*self.passes, *self.model_passes):
            if name not in PASSES:
                raise ValueError(f"unknown pass {name!r}; choose from {', '.join(PASSES)}")
        if self.layout not in VIT_LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose from {', '.join(VIT_LAYOUTS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if min(self.sides, default=1) < 1:
            raise ValueError("grid sides must be >= 1")
        for resolution in self.resolutions:
            check_resolution(resolution)
        if self.batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("batch and repeats must be >= 1, warmup >= 0")
        if self.repeat_budget_s <= 0 or self.cell_budget_s < 0:
            raise ValueError("repeat budget must be > 0 and cell budget >= 0 (0: no limit)")
        if self.dim < 1 or self.heads < 1:
            raise ValueError(f"dim and heads must be >= 1, got dim={self.dim}, heads={self.heads}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        device = torch.device(self.device)
        if device.type == "meta":
            raise ValueError("device meta computes nothing to time; use cpu or cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda requested but torch sees no CUDA GPU")
        if self.dtype != "fp32":
            try:
                with torch.autocast(device.type, dtype=DTYPES[self.dtype]):
                    torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            except (RuntimeError, ValueError) as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ValueError(f"dtype {self.dtype} is not supported on {self.device}: {first_line}") from None


@dataclass(frozen=True)
class Cell:
    """One measurement: a mechanism at one size, forward or forward+backward."""

    level: str
    mechanism: str
    size_label: str
    tokens: int
    run_pass: str
    grid: tuple[int, int]
    resolution: int | None


@dataclass
class Row:
    """The measured result of a cell; ratios are speedups (their latency / ours), filled by :func:`add_ratios`."""

    level: str
    mechanism: str
    size: str
    tokens: int
    run_pass: str
    batch: int
    dtype: str
    status: str = "ok"
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    throughput: float | None = None
    throughput_unit: str = ""
    peak_mib: float | None = None
    gflops: float | None = None
    speedup_vs_vanilla: float | None = None
    speedup_vs_sdpa: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def plan_cells(config: BenchConfig) -> list[Cell]:
    """All cells in run order: level, size, pass, mechanism (so ratios at a size are measured side by side)."""
    cells = []
    if "op" in config.levels:
        for side in config.sides:
            for run_pass in config.passes:
                for name in config.mechanisms:
                    cells.append(Cell("op", name, f"{side}x{side}", side * side, run_pass, (side, side), None))
    if "model" in config.levels:
        for resolution in config.resolutions:
            grid = (resolution // 16, resolution // 16)
            for run_pass in config.model_passes:
                for name in (*config.mechanisms, *config.backbones):
                    cells.append(Cell("model", name, f"{resolution}px", grid[0] * grid[1], run_pass, grid, resolution))
    return cells


def build_cell(cell: Cell, config: BenchConfig, device: torch.device) -> tuple[nn.Module, tuple]:
    """The module and inputs of a cell, seeded by ``config.seed``: eval mode for a forward, inputs with gradients
    for a forward + backward."""
    torch.manual_seed(config.seed)
    if cell.level == "op":
        module: nn.Module = _GridCall(build_attention(cell.mechanism, config.dim, config.heads), cell.grid)
        inputs: tuple = (torch.randn(config.batch, cell.tokens, config.dim, device=device),)
    else:
        if cell.mechanism in MECHANISMS:
            module = AttentionViT(cell.mechanism, config.layout)
        else:
            module = build_backbone(cell.mechanism, cell.resolution)
        inputs = (torch.randn(config.batch, 3, cell.resolution, cell.resolution, device=device),)
    module = module.to(device)
    if cell.run_pass == "fwd":
        module.eval()
    else:
        inputs = tuple(x.requires_grad_() for x in inputs)
    return module, inputs


class _GridCall(nn.Module):
    """Binds the grid size so that every level calls ``module(*inputs)``."""

    def __init__(self, attention: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.attention, self.grid = attention, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, self.grid)


def cell_step(
    module: nn.Module, inputs: tuple, run_pass: str, autocast: Callable[[], contextlib.AbstractContextManager]
) -> Callable[[], None]:
    """One call of a cell: a forward under inference mode, or a forward and backward from fresh gradients."""
    if run_pass == "fwd":

        def forward() -> None:
            with torch.inference_mode(), autocast():
                module(*inputs)

        return forward

    def forward_backward() -> None:
        module.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None
        with autocast():
            out = module(*inputs)
        out.float().sum().backward()

    return forward_backward


def run_cell(cell: Cell, config: BenchConfig) -> Row:
    """Measure one cell: latency, peak memory and FLOPs; errors (out of memory, say) become the row's status."""
    device = torch.device(config.device)
    row = Row(cell.level, cell.mechanism, cell.size_label, cell.tokens, cell.run_pass, config.batch, config.dtype)
    dtype = DTYPES[config.dtype]

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if config.dtype != "fp32" else contextlib.nullcontext()

    try:
        module, inputs = build_cell(cell, config, device)
        flops = count_flops(module, inputs, backward=cell.run_pass == "fwd+bwd")
        row.gflops = None if flops is None else flops / 1e9
        runnable = torch.compile(module) if config.compile else module
        step = cell_step(runnable, inputs, cell.run_pass, autocast)
        for _ in range(max(config.warmup, 1 if config.compile else 0)):
            step()
        row.peak_mib = peak_memory_mib(step, device)
        timing = time_call(step, device, warmup=0, repeats=config.repeats, budget_s=config.repeat_budget_s)
        row.median_ms, row.p25_ms, row.p75_ms = timing.median_ms, timing.p25_ms, timing.p75_ms
        per_second = 1e3 / timing.median_ms
        if cell.level == "op":
            row.throughput, row.throughput_unit = config.batch * cell.tokens * per_second, "tokens/s"
        else:
            row.throughput, row.throughput_unit = config.batch * per_second, "images/s"
    except torch.OutOfMemoryError:
        row.status = "out of memory"
    except RuntimeError as error:
        row.status = "error: " + (str(error).splitlines() or [type(error).__name__])[0][:120]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[Row]) -> None:
    """Fill each row's speedups against vanilla and SDPA measured at the same level, size and pass."""
    baselines: dict[tuple[str, str, str, str], float] = {}
    for row in rows:
        if row.mechanism in ("vanilla", "sdpa") and row.median_ms:
            baselines[row.level, row.size, row.run_pass, row.mechanism] = row.median_ms
    for row in rows:
        if not row.median_ms:
            continue
        for baseline, attribute in (("vanilla", "speedup_vs_vanilla"), ("sdpa", "speedup_vs_sdpa")):
            reference = baselines.get((row.level, row.size, row.run_pass, baseline))
            setattr(row, attribute, None if reference is None else reference / row.median_ms)


def iterate(config: BenchConfig) -> Iterator[tuple[Cell, Row]]:
    """Run the planned cells in order, yielding each with its row.

    A cell whose time, extrapolated quadratically in tokens from the same mechanism's last size, would pass
    ``config.cell_budget_s`` is skipped, with the prediction in its status.
    """
    last: dict[tuple[str, str, str], tuple[int, float]] = {}
    calls = config.warmup + 1 + min(config.repeats, 3)
    with earlier_objects_out_of_collection():
        for cell in plan_cells(config):
            key = (cell.level, cell.mechanism, cell.run_pass)
            if config.cell_budget_s and key in last:
                tokens, median_ms = last[key]
                predicted_s = median_ms / 1e3 * (cell.tokens / tokens) ** 2 * calls
                if predicted_s > config.cell_budget_s:
                    row = Row(
                        cell.level,
                        cell.mechanism,
                        cell.size_label,
                        cell.tokens,
                        cell.run_pass,
                        config.batch,
                        config.dtype,
                        status=f"skipped (~{predicted_s:.0f}s > budget)",
                    )
                    yield cell, row
                    continue
            row = run_cell(cell, config)
            if row.median_ms:
                last[key] = (cell.tokens, row.median_ms)
            yield cell, row
