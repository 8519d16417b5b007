"""`elfatt bench` end to end on a tiny sweep (its one-line errors: tests/test_command_inputs.py)."""

from __future__ import annotations

import csv
import json

import pytest

from elfatt.bench.cli import main
from elfatt.bench.runner import DEFAULT_BENCH_MECHANISMS as MECHANISMS


def test_tiny_sweep_writes_csv_json_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--sides", "4", "6", "--resolutions", "32", "48", "--layout", "vit_micro", "--repeats", "2"]
    # No cell may be skipped for time here, however loaded the machine is.
    argv += ["--cell-budget", "0"]
    assert main([*argv, "--backbones", "swin_elfatt_tiny_224", "--out", str(out)]) == 0
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    mechanisms = len(MECHANISMS)
    # op level: 2 sides x 2 passes; model level: 2 resolutions x 1 pass, each mechanism and the backbone
    assert len(rows) == mechanisms * 2 * 2 + (mechanisms + 1) * 2
    assert [row["size"] for row in rows if row["mechanism"] == "swin_elfatt_tiny_224"] == ["32px", "48px"]
    assert all(row["status"] == "ok" for row in rows), [row["status"] for row in rows if row["status"] != "ok"]
    for row in rows:
        assert float(row["median_ms"]) > 0
        assert float(row["gflops"]) > 0
        if row["mechanism"] == "vanilla":
            assert float(row["speedup_vs_vanilla"]) == 1.0
        if row["mechanism"] == "sdpa":
            assert float(row["speedup_vs_sdpa"]) == 1.0
    payload = json.loads((out / "results.json").read_text())
    assert payload["machine"]["torch"] and payload["machine"]["cpu"]
    assert len(payload["rows"]) == len(rows)
    summary = (out / "summary.md").read_text()
    assert summary.count("| **elfatt** |") == 3
    for name in ("op_level.png", "model_level.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "op level, fwd+bwd" in printed and "model level, fwd" in printed


def test_backbone_timing_writes_a_row_per_model(tmp_path):
    from elfatt.bench.backbones import main as backbones_main

    argv = [
        "--models",
        "swin_elfatt_tiny_224",
        "--timm-models",
        "--resolutions",
        "64",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert backbones_main(argv) == 0
    with (tmp_path / "backbones.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["model"] == "swin_elfatt_tiny_224" and float(row["params_m"]) > 29
    assert float(row["gmacs_224"]) > 4 and float(row["fwd_ms_64"]) > 0
    assert "speedup_64" not in row  # no reference model in the run
    table = (tmp_path / "backbones.md").read_text()
    assert "| swin_elfatt_tiny_224 |" in table and "(x)" not in table


def test_backbone_timing_refuses_a_csv_path_for_its_output_folder(tmp_path, capsys):
    from elfatt.bench.backbones import main as backbones_main

    with pytest.raises(SystemExit):
        backbones_main(["--models", "swin_elfatt_tiny_224", "--timm-models", "--out", str(tmp_path / "b.csv")])
    assert "--out is a folder" in capsys.readouterr().err


def test_backbone_speedups_are_ratios_to_the_reference_in_the_same_run(tmp_path):
    from elfatt.bench.backbones import main as backbones_main

    argv = ["--models", "swin_elfatt_tiny_hr", "--timm-models", "vit_small_patch16_224", "--resolutions", "64"]
    argv += ["--repeats", "1", "--reference", "timm:vit_small_patch16_224", "--no-progress", "--out", str(tmp_path)]
    assert backbones_main(argv) == 0
    with (tmp_path / "backbones.csv").open() as handle:
        ours, reference = list(csv.DictReader(handle))
    assert reference["model"] == "timm:vit_small_patch16_224" and float(reference["speedup_64"]) == 1.0
    expected = float(reference["fwd_ms_64"]) / float(ours["fwd_ms_64"])
    assert float(ours["speedup_64"]) == pytest.approx(expected)
