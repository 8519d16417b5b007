"""`elfatt bench` end to end on a tiny sweep (its one-line errors: tests/test_command_inputs.py)."""

from __future__ import annotations

import csv
import json

import pytest

from elfatt_lab.bench.cli import main
from elfatt_lab.bench.runner import DEFAULT_BENCH_MECHANISMS as MECHANISMS


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
    from elfatt_lab.bench.backbones import main as backbones_main

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
    from elfatt_lab.bench.backbones import main as backbones_main

    with pytest.raises(SystemExit):
        backbones_main(["--models", "swin_elfatt_tiny_224", "--timm-models", "--out", str(tmp_path / "b.csv")])
    assert "--out is a folder" in capsys.readouterr().err


def test_backbone_speedups_are_ratios_to_the_reference_in_the_same_run(tmp_path):
    from elfatt_lab.bench.backbones import main as backbones_main

    argv = ["--models", "swin_elfatt_tiny_hr", "--timm-models", "vit_small_patch16_224", "--resolutions", "64"]
    argv += ["--repeats", "1", "--reference", "timm:vit_small_patch16_224", "--no-progress", "--out", str(tmp_path)]
    assert backbones_main(argv) == 0
    with (tmp_path / "backbones.csv").open() as handle:
        ours, reference = list(csv.DictReader(handle))
    assert reference["model"] == "timm:vit_small_patch16_224" and float(reference["speedup_64"]) == 1.0
    expected = float(reference["fwd_ms_64"]) / float(ours["fwd_ms_64"])
    assert float(ours["speedup_64"]) == pytest.approx(expected)


TINY = ["--levels", "op", "--sides", "4", "6", "--passes", "fwd", "--mechanisms", "sdpa", "elfatt", "--repeats", "3"]


def test_ctrl_c_keeps_the_rows_so_far_and_resume_continues(tmp_path, monkeypatch, capsys):
    import elfatt_lab.bench.runner as runner

    out = tmp_path / "bench"
    real_iterate = runner.iterate

    def interrupted(config, done=frozenset()):
        for number, group in enumerate(real_iterate(config, done)):
            if number == 1:
                raise KeyboardInterrupt
            yield group

    monkeypatch.setattr(runner, "iterate", interrupted)
    assert main([*TINY, "--out", str(out)]) == 130
    assert "interrupted: kept 2 cells" in capsys.readouterr().out
    with (out / "results.csv").open() as handle:
        assert [row["size"] for row in csv.DictReader(handle)] == ["4x4", "4x4"]
    assert (out / "summary.md").is_file()
    monkeypatch.setattr(runner, "iterate", real_iterate)
    assert main([*TINY, "--out", str(out), "--resume"]) == 0
    with (out / "results.csv").open() as handle:
        assert [row["size"] for row in csv.DictReader(handle)] == ["4x4", "4x4", "6x6", "6x6"]
    assert main([*TINY[:-1], "4", "--out", str(out), "--resume"]) == 2
    assert "other options (repeats)" in capsys.readouterr().err


def test_compare_marks_changes_beyond_the_noise(tmp_path, capsys):
    from elfatt_lab.bench.compare import change_rows

    old, new = tmp_path / "old", tmp_path / "new"
    for folder, elfatt_ms in ((old, 2.0), (new, 1.0)):
        folder.mkdir()
        header = "level,mechanism,size,tokens,run_pass,batch,dtype,status,median_ms,spread,speedup_vs_sdpa\n"
        lines = [
            "op,sdpa,8x8,64,fwd,1,fp32,ok,4.0,0.02,1.0\n",
            f"op,elfatt,8x8,64,fwd,1,fp32,ok,{elfatt_ms},0.03,{4.0 / elfatt_ms}\n",
        ]
        (folder / "results.csv").write_text(header + "".join(lines))
    (change,) = change_rows(old, new)
    assert change["change"] == 2.0 and change["beyond_noise"] and abs(change["noise"] - 0.1) < 1e-9
    assert main(["--compare", str(old), str(new)]) == 0
    assert "| op | elfatt | 8x8 | fwd | 2.00x | 4.00x | 2.00x * |" in capsys.readouterr().out
    assert main(["--compare", str(old), str(tmp_path / "none")]) == 2


def test_the_load_note_names_other_busy_processes(monkeypatch):
    from elfatt_lab.bench import cli

    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert cli.load_note([]) is None
    note = cli.load_note(["python3", "python3", "make"])
    assert note.startswith("note: the machine was busy") and "make, python3" in note and "\n" not in note
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert "load average 9.0" in cli.load_note([])
