"""The benchmark sweep: every (level, size, mechanism, pass) cell measured in one run, ratios computed after."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from elfatt_lab._memory import available_mib
from elfatt_lab.attention import MECHANISMS, build_attention, check_mechanisms
from elfatt_lab.bench.backbone_models import build_backbone, check_backbones, default_backbones
from elfatt_lab.bench.measure import (
    MIN_ROUNDS,
    Timing,
    count_flops,
    earlier_objects_out_of_collection,
    peak_memory_mib,
    round_robin_timings,
)
from elfatt_lab.bench.memory_bound import estimate_mib, input_mib
from elfatt_lab.bench.models import VIT_LAYOUTS, AttentionViT, check_resolution

__all__ = [
    "BenchConfig",
    "Cell",
    "Row",
    "plan_cells",
    "build_cell",
    "cell_step",
    "prepare_cell",
    "time_side_by_side",
    "plan_groups",
    "predict_call_s",
    "cell_key",
    "iterate",
    "UNSTABLE_SPREAD",
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
    repeat_budget_s: float = 3.0
    cell_budget_s: float = 10.0
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
        self._check_fits()
        if self.dtype != "fp32":
            try:
                with torch.autocast(device.type, dtype=DTYPES[self.dtype]):
                    torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            except (RuntimeError, ValueError) as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ValueError(f"dtype {self.dtype} is not supported on {self.device}: {first_line}") from None

    def _check_fits(self) -> None:
        """Refuse, before anything is allocated, sizes whose tokens alone exceed the free memory."""
        free = available_mib(torch.device(self.device))
        cells = plan_cells(self)
        for cell in [max(cells, key=lambda cell: input_mib(cell, self))] if cells else []:
            need = input_mib(cell, self)
            if free is not None and need > free:
                option = "--sides" if cell.level == "op" else "--resolutions"
                raise ValueError(
                    f"{option} {cell.size_label}: its tokens alone need ~{need / 1024:.1f} GiB, {free / 1024:.1f} GiB "
                    "are free; choose smaller sides"
                )


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
    spread: float | None = None
    stable: bool | None = None
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


# A cell whose spread (IQR / median over its rounds) is above this is measured again, then marked unstable: the
# threshold pyperf and torch.utils.benchmark use.
UNSTABLE_SPREAD = 0.10
# Only a mechanism whose time grew at least as tokens ** SKIP_GROWTH between its last two sizes is skipped for time.
SKIP_GROWTH = 1.5
# The mechanisms every speed-up is measured against: re-measured beside any unsteady cell of their group.
BASELINES = ("sdpa", "vanilla")


def _blank_row(cell: Cell, config: BenchConfig, status: str = "ok") -> Row:
    return Row(
        cell.level, cell.mechanism, cell.size_label, cell.tokens, cell.run_pass, config.batch, config.dtype, status
    )


def _autocast(config: BenchConfig) -> Callable[[], contextlib.AbstractContextManager]:
    device = torch.device(config.device)

    def autocast() -> contextlib.AbstractContextManager:
        if config.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=DTYPES[config.dtype])

    return autocast


def prepare_cell(cell: Cell, config: BenchConfig) -> tuple[Row, Callable[[], None] | None]:
    """Build a cell, count its FLOPs, warm it up and take its peak memory; its step, or None where building or
    running it failed (out of memory, say: the row's status says so)."""
    device = torch.device(config.device)
    row = _blank_row(cell, config)
    try:
        module, inputs = build_cell(cell, config, device)
        flops = count_flops(module, inputs, backward=cell.run_pass == "fwd+bwd")
        row.gflops = None if flops is None else flops / 1e9
        runnable = torch.compile(module) if config.compile else module
        step = cell_step(runnable, inputs, cell.run_pass, _autocast(config))
        for _ in range(max(config.warmup, 1 if config.compile else 0)):
            step()
        row.peak_mib = peak_memory_mib(step, device)
        return row, step
    except torch.OutOfMemoryError:
        row.status = "out of memory"
    except RuntimeError as error:
        row.status = "error: " + (str(error).splitlines() or [type(error).__name__])[0][:120]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, None


def _fill_timing(row: Row, cell: Cell, config: BenchConfig, timing: Timing) -> None:
    row.median_ms, row.p25_ms, row.p75_ms = timing.median_ms, timing.p25_ms, timing.p75_ms
    row.spread = (timing.p75_ms - timing.p25_ms) / timing.median_ms
    per_second = 1e3 / timing.median_ms
    if cell.level == "op":
        row.throughput, row.throughput_unit = config.batch * cell.tokens * per_second, "tokens/s"
    else:
        row.throughput, row.throughput_unit = config.batch * per_second, "images/s"


def time_side_by_side(steps: dict[Cell, Callable[[], None]], config: BenchConfig) -> dict[Cell, Timing]:
    """The cells of one group timed in interleaved rounds, each cell once per round in turn, so that a disturbance
    slows them alike and their ratios come from the same minutes. Cells whose spread is above
    :data:`UNSTABLE_SPREAD` are measured again, side by side with the group's baselines (``sdpa``, ``vanilla``), and
    each of those keeps the steadier of its two measurements."""
    device = torch.device(config.device)
    rounds = max(config.repeats, MIN_ROUNDS)
    budget_s = config.repeat_budget_s * len(steps)
    timings = round_robin_timings(steps, device, rounds, budget_s=budget_s, warmup=False)
    unsteady = {cell for cell, timing in timings.items() if _spread(timing) > UNSTABLE_SPREAD}
    if unsteady:
        again_steps = {cell: step for cell, step in steps.items() if cell in unsteady or cell.mechanism in BASELINES}
        budget_s = config.repeat_budget_s * len(again_steps)
        again = round_robin_timings(again_steps, device, rounds, budget_s=budget_s, warmup=False)
        for cell, timing in again.items():
            timings[cell] = min(timings[cell], timing, key=_spread)
    return timings


def _spread(timing: Timing) -> float:
    return (timing.p75_ms - timing.p25_ms) / timing.median_ms


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


def predict_call_s(measured: list[tuple[int, float]], tokens: int) -> float | None:
    """Seconds of one call at ``tokens``, from a mechanism's (tokens, seconds) at smaller sizes of the same level and
    pass: a power law from its last size, with the smaller of its growth exponents between its last two sizes and
    over all of them, where that is at least :data:`SKIP_GROWTH` (quadratic attention); None where it grows slower
    or only one size was measured. So a mechanism is skipped for its own quadratic growth, never for a slow
    machine's constant factor, nor for one disturbed size."""
    if len(measured) < 2:
        return None
    exponents = []
    for (before_tokens, before_s), (last_tokens, last_s) in ((measured[-2], measured[-1]), (measured[0], measured[-1])):
        if last_tokens <= before_tokens or before_s <= 0 or last_s <= 0:
            return None
        exponents.append(math.log(last_s / before_s) / math.log(last_tokens / before_tokens))
    exponent = min(*exponents, 2.0)
    last_tokens, last_s = measured[-1]
    return last_s * (tokens / last_tokens) ** exponent if exponent >= SKIP_GROWTH else None


def plan_groups(config: BenchConfig) -> list[list[Cell]]:
    """The planned cells in groups measured side by side: every mechanism at one level, size and pass."""
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in plan_cells(config):
        groups.setdefault((cell.level, cell.size_label, cell.run_pass), []).append(cell)
    return list(groups.values())


def cell_key(level: str, mechanism: str, size: str, run_pass: str) -> tuple[str, str, str, str]:
    """What names a cell in results.csv (for --resume and --compare)."""
    return level, mechanism, size, run_pass


def iterate(config: BenchConfig, done: frozenset[tuple[str, str, str, str]] = frozenset()) -> Iterator[list[Row]]:
    """Measure the planned cells group by group (:func:`plan_groups`), yielding each group's rows as it finishes.

    Cells in ``done`` (by :func:`cell_key`) are left out. A cell that would not fit in the memory available
    (:func:`~elfatt_lab.bench.memory_bound.estimate_mib`) is skipped with the estimate in its status, before anything
    is allocated. A cell whose time, predicted by :func:`predict_call_s` from the same mechanism's measurements at
    smaller sizes, would pass ``config.cell_budget_s`` is skipped with the prediction.
    """
    measured: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    calls = config.warmup + 1 + MIN_ROUNDS
    available = available_mib(torch.device(config.device))
    with earlier_objects_out_of_collection():
        for group in plan_groups(config):
            rows: dict[Cell, Row] = {}
            steps: dict[Cell, Callable[[], None]] = {}
            for cell in group:
                if cell_key(cell.level, cell.mechanism, cell.size_label, cell.run_pass) in done:
                    continue
                need = estimate_mib(cell, config)
                key = (cell.level, cell.mechanism, cell.run_pass)
                if available is not None and need > available:
                    rows[cell] = _blank_row(cell, config, f"skipped (needs ~{need:.0f} MiB, {available:.0f} available)")
                elif config.cell_budget_s and key in measured:
                    predicted_s = (predict_call_s(measured[key], cell.tokens) or 0.0) * calls
                    if predicted_s > config.cell_budget_s:
                        rows[cell] = _blank_row(cell, config, f"skipped (~{predicted_s:.0f}s > budget)")
                if cell not in rows:
                    rows[cell], step = prepare_cell(cell, config)
                    if step is not None:
                        steps[cell] = step
            if steps:
                for cell, timing in time_side_by_side(steps, config).items():
                    _fill_timing(rows[cell], cell, config, timing)
                    rows[cell].stable = rows[cell].spread <= UNSTABLE_SPREAD
                    # a disturbance only adds time: an unsteady cell predicts from its lower quartile
                    undisturbed = timing.median_ms if rows[cell].stable else timing.p25_ms
                    measured.setdefault((cell.level, cell.mechanism, cell.run_pass), []).append(
                        (cell.tokens, undisturbed / 1e3)
                    )
            steps.clear()
            if rows:
                yield [rows[cell] for cell in group if cell in rows]
