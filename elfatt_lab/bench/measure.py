"""Measuring one benchmark cell: latency (median and spread), peak memory, FLOPs."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from elfatt_lab._memory import peak_rss_mib, reset_peak_rss, rss_available, rss_mib

__all__ = [
    "MIN_ROUNDS",
    "Timing",
    "time_call",
    "time_round_robin",
    "peak_memory_mib",
    "memory_method",
    "count_flops",
    "earlier_objects_out_of_collection",
]

_M_MMAP_THRESHOLD = -3
# Timed calls (or rounds) made before a time budget may stop them: quartiles need a few.
MIN_ROUNDS = 3


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _load_libc()


@contextlib.contextmanager
def _freed_memory_returned_to_os() -> Iterator[None]:
    """Within the block, every allocation over 128 KiB is its own mmap, returned to the OS when freed.

    glibc otherwise keeps large freed blocks in its heap, so a call after an earlier large one shows no RSS
    growth. Afterwards the threshold goes to glibc's own maximum (32 MiB on 64-bit), close to the steady state
    of its dynamic threshold, so timed calls reuse the heap as they would by default. No-op without glibc.
    """
    if _LIBC is None:
        yield
        return
    _LIBC.malloc_trim(0)
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    try:
        yield
    finally:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)


@contextlib.contextmanager
def earlier_objects_out_of_collection() -> Iterator[None]:
    """Within the block, the objects alive at its start are out of the cycle collector's sight; back afterwards.

    With torch and timm imported, a full ``gc.collect()`` walks millions of objects (tenths of a second a call),
    and :func:`peak_memory_mib` collects before every cell; frozen, it walks only what the cells made.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class Timing:
    """Latency of repeated calls, in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    repeats: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int, budget_s: float = float("inf")
) -> Timing:
    """Time ``fn`` after ``warmup`` calls: CUDA events on a GPU, ``perf_counter`` around a sync elsewhere.

    Stops before ``repeats`` once the timed calls have taken ``budget_s`` and at least :data:`MIN_ROUNDS` were made.
    """
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times: list[float] = []
    for _ in range(repeats):
        if len(times) >= MIN_ROUNDS and sum(times) / 1e3 >= budget_s:
            break
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            start_s = time.perf_counter()
            fn()
            _synchronize(device)
            times.append((time.perf_counter() - start_s) * 1e3)
    if len(times) == 1:
        return Timing(times[0], times[0], times[0], 1)
    quartiles = statistics.quantiles(times, n=4)
    return Timing(statistics.median(times), quartiles[0], quartiles[2], len(times))


def round_robin_timings(
    calls: Mapping[Any, Callable[[], object]],
    device: torch.device,
    rounds: int,
    advance: Callable[[], object] | None = None,
    *,
    budget_s: float = float("inf"),
    warmup: bool = True,
) -> dict[Any, Timing]:
    """Milliseconds of each call over ``rounds`` rounds (median and quartiles), each round every call once, in turn,
    after one warm-up call each (unless ``warmup`` is False: the caller warmed them): a noisy machine slows them
    alike, so their ratios hold. ``advance`` runs after each round (a progress bar's). Once :data:`MIN_ROUNDS`
    were made, no round starts that would end past ``budget_s`` at the pace of the rounds so far."""
    times: dict[Any, list[float]] = {name: [] for name in calls}
    for fn in calls.values() if warmup else ():
        fn()
    began = time.perf_counter()
    for done in range(rounds):
        elapsed_s = time.perf_counter() - began
        if done >= MIN_ROUNDS and elapsed_s * (done + 1) / done > budget_s:
            break
        for name, fn in calls.items():
            _synchronize(device)
            start_s = time.perf_counter()
            fn()
            _synchronize(device)
            times[name].append((time.perf_counter() - start_s) * 1e3)
        if advance is not None:
            advance()
    timings = {}
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        timings[name] = Timing(statistics.median(values), quartiles[0], quartiles[2], len(values))
    return timings


def time_round_robin(
    calls: Mapping[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    advance: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median milliseconds of each call, from :func:`round_robin_timings`."""
    return {name: timing.median_ms for name, timing in round_robin_timings(calls, device, rounds, advance).items()}


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory_mib` measures on ``device``."""
    if device.type == "cuda":
        return "cuda max_memory_allocated above the allocation before the call"
    if rss_available():
        return "peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before the call"
    return "unavailable"


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory that one call of ``fn`` adds, in MiB; None where it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if memory_method(device) == "unavailable":
        return None
    with _freed_memory_returned_to_os():
        if not reset_peak_rss():
            return None
        before = rss_mib()
        fn()
        return max(peak_rss_mib() - before, 0)


def count_flops(module: nn.Module, inputs: tuple, *, backward: bool) -> float | None:
    """FLOPs of one forward (and backward) of ``module`` on ``inputs``, counted by ``FlopCounterMode`` on a meta
    copy so nothing is computed; None where an op has no meta kernel."""
    try:
        meta_module = copy.deepcopy(module).to("meta")
        meta_inputs = tuple(
            torch.empty_like(x, device="meta").requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
            for x in inputs
        )
        counter = FlopCounterMode(display=False)
        with counter:
            out = meta_module(*meta_inputs)
            if backward:
                out.sum().backward()
        return float(counter.get_total_flops())
    except (NotImplementedError, RuntimeError):
        return None
