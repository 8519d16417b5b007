"""The measuring pieces: timing, FLOP counting, peak memory, ratios and cell skipping."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
import torch

from elfatt_lab.bench.measure import (
    MIN_ROUNDS,
    Timing,
    count_flops,
    earlier_objects_out_of_collection,
    memory_method,
    peak_memory_mib,
    round_robin_timings,
    time_call,
)
from elfatt_lab.bench.runner import BenchConfig, Row, add_ratios, iterate


def test_time_call_counts_repeats_and_orders_quartiles():
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=7)
    assert len(calls) == 9 and timing.repeats == 7
    assert timing.p25_ms <= timing.median_ms <= timing.p75_ms


def test_time_call_stops_at_budget_after_three_calls():
    timing = time_call(lambda: sum(range(20000)), torch.device("cpu"), warmup=0, repeats=50, budget_s=1e-9)
    assert timing.repeats == 3


def test_flops_of_a_linear_layer():
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(5, 8, requires_grad=True)
    assert count_flops(layer, (x,), backward=False) == 2 * 5 * 8 * 16
    # backward: grad of input and of weight, each as many FLOPs as the forward
    assert count_flops(layer, (x,), backward=True) == 3 * 2 * 5 * 8 * 16


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS through /proc is Linux-only")
def test_peak_memory_sees_a_large_allocation():
    if memory_method(torch.device("cpu")) == "unavailable":
        pytest.skip("no /proc/self/clear_refs")
    peak = peak_memory_mib(lambda: torch.ones(64, 2**20 // 4).sum(), torch.device("cpu"))
    assert peak is not None and 48 <= peak <= 256


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_frozen_objects_stay_alive_new_cycles_are_still_collected_and_all_thaw_after():
    earlier = _Cycle()
    earlier_ref = weakref.ref(earlier)
    with earlier_objects_out_of_collection():
        assert gc.get_freeze_count() > 0
        del earlier
        new = _Cycle()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        # The earlier cycle is frozen (a cycle that died during the block waits for the next collection after it).
        assert new_ref() is None and earlier_ref() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert earlier_ref() is None


def _row(mechanism: str, ms: float, size: str = "8x8") -> Row:
    return Row("op", mechanism, size, 64, "fwd", 1, "fp32", median_ms=ms)


def test_ratios_are_speedups_within_the_same_size():
    rows = [_row("vanilla", 10.0), _row("sdpa", 4.0), _row("elfatt", 2.0), _row("elfatt", 1.0, size="16x16")]
    add_ratios(rows)
    assert rows[2].speedup_vs_vanilla == 5.0 and rows[2].speedup_vs_sdpa == 2.0
    assert rows[3].speedup_vs_vanilla is None and rows[3].speedup_vs_sdpa is None


def test_only_cells_growing_quadratically_past_the_budget_are_skipped(monkeypatch):
    import elfatt_lab.bench.runner as runner

    def growth(steps, device, rounds, advance=None, **options):
        # vanilla's time grows with tokens squared, elfatt's with tokens: 1 s at 64 tokens for both
        power = {"vanilla": 2, "elfatt": 1}
        return {cell: Timing(*[1e3 * (cell.tokens / 64) ** power[cell.mechanism]] * 3, rounds) for cell in steps}

    monkeypatch.setattr(runner, "round_robin_timings", growth)
    config = BenchConfig(
        levels=("op",), mechanisms=("vanilla", "elfatt"), sides=(4, 8, 16), dim=8, heads=2, passes=("fwd",)
    )
    config.cell_budget_s = 30.0
    rows = {(row.mechanism, row.size): row for group in iterate(config) for row in group}
    # vanilla at 16x16 would take 16 s a call, 5 calls: skipped; elfatt (4 s a call) is not, however slow
    assert rows["vanilla", "16x16"].status == "skipped (~80s > budget)" and rows["vanilla", "16x16"].median_ms is None
    assert all(row.status == "ok" for key, row in rows.items() if key != ("vanilla", "16x16"))


def test_a_cell_that_cannot_fit_in_memory_is_skipped_before_it_is_built(monkeypatch):
    import elfatt_lab.bench.runner as runner

    def forbidden(cell, config):
        raise AssertionError(f"{cell} was built")

    monkeypatch.setattr(runner, "prepare_cell", forbidden)
    config = BenchConfig(levels=("op",), mechanisms=("vanilla", "elfatt"), sides=(4000,), passes=("fwd",))
    rows = [row for group in iterate(config) for row in group]
    assert all(row.status.startswith("skipped (needs ~") and row.status.endswith("available)") for row in rows)


def test_cells_of_a_group_are_timed_in_interleaved_rounds(monkeypatch):
    """Every round calls every mechanism once, in turn: the order of calls is the round-robin order."""
    import elfatt_lab.bench.runner as runner

    calls = []
    config = BenchConfig(levels=("op",), mechanisms=("sdpa", "elfatt"), sides=(4,), passes=("fwd",), repeats=3)
    real_prepare = runner.prepare_cell

    def recording(cell, config):
        row, step = real_prepare(cell, config)
        return row, (lambda: calls.append(cell.mechanism) or step())

    monkeypatch.setattr(runner, "prepare_cell", recording)
    monkeypatch.setattr(runner, "UNSTABLE_SPREAD", float("inf"))
    (group,) = list(iterate(config))
    assert [row.mechanism for row in group] == ["sdpa", "elfatt"]
    # warmed up when prepared, then rounds of both in turn
    assert calls == ["sdpa", "elfatt"] * 3


def test_an_unsteady_cell_is_measured_again_then_marked(monkeypatch):
    import elfatt_lab.bench.runner as runner

    measured = []

    def unsteady(steps, device, rounds, advance=None, **options):
        measured.append(len(steps))
        return {cell: Timing(10.0, 5.0, 20.0, rounds) for cell in steps}

    monkeypatch.setattr(runner, "round_robin_timings", unsteady)
    config = BenchConfig(levels=("op",), mechanisms=("sdpa",), sides=(4,), passes=("fwd",))
    (group,) = list(iterate(config))
    assert measured == [1, 1], "an unsteady group is measured a second time"
    assert group[0].stable is False and group[0].spread == 1.5


def test_only_unsteady_cells_and_the_baselines_are_measured_again(monkeypatch):
    import elfatt_lab.bench.runner as runner

    measured = []

    def first_unsteady(steps, device, rounds, advance=None, **options):
        measured.append(sorted(cell.mechanism for cell in steps))
        spread = 5.0 if len(measured) == 1 else 0.1
        timings = {}
        for cell in steps:
            half = spread if cell.mechanism == "elfatt" else 0.0
            timings[cell] = Timing(10.0, 10.0 - half, 10.0 + half, rounds)
        return timings

    monkeypatch.setattr(runner, "round_robin_timings", first_unsteady)
    config = BenchConfig(levels=("op",), mechanisms=("sdpa", "swin", "elfatt"), sides=(4,), passes=("fwd",))
    (group,) = list(iterate(config))
    assert measured == [["elfatt", "sdpa", "swin"], ["elfatt", "sdpa"]]
    assert [row.stable for row in group] == [True, True, True] and abs(group[2].spread - 0.02) < 1e-9


def test_a_prediction_follows_the_mechanisms_own_quadratic_growth():
    from elfatt_lab.bench.runner import predict_call_s

    # quadratic growth between the last two sizes predicts quadratically, held at 2 beyond
    assert predict_call_s([(100, 1.0), (200, 4.0)], 400) == pytest.approx(16.0)
    assert predict_call_s([(50, 0.1), (100, 1.0), (200, 100.0)], 400) == pytest.approx(400.0)
    # one disturbed size cannot make a linear mechanism look quadratic: its growth over all sizes counts too
    assert predict_call_s([(50, 1.0), (100, 1.0), (200, 4.0)], 400) is None
    assert predict_call_s([(100, 1.0), (200, 2.0**1.6)], 400) == pytest.approx(2.0**3.2)
    # nothing to skip for: one size, or growth closer to linear (a slow machine slows every size alike)
    assert predict_call_s([(100, 1.0)], 200) is None
    assert predict_call_s([(100, 1.0), (200, 2.5)], 400) is None
    assert predict_call_s([(100, 4.0), (200, 1.0)], 400) is None


def test_no_round_starts_that_would_end_past_the_budget(monkeypatch):
    import elfatt_lab.bench.measure as measure

    clock = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])

    def one_second():
        clock[0] += 1.0

    # rounds of 1 s against 4.5 s: the fifth would end past it
    timings = round_robin_timings({"a": one_second}, torch.device("cpu"), rounds=50, budget_s=4.5, warmup=False)
    assert timings["a"].repeats == 4 and clock[0] == 4.0
    short = round_robin_timings({"a": one_second}, torch.device("cpu"), rounds=50, budget_s=0.0, warmup=False)
    assert short["a"].repeats == MIN_ROUNDS
