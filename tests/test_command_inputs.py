"""Every command refuses input it cannot use in one line on stderr, exit status 2, before any work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from elfatt_lab.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")

BENCH_CASES = [
    (["--levels", "op", "--sides", "100000"], "--sides 100000x100000: its tokens alone need ~"),
    (["--mechanisms", "elfatt", "nope"], "unknown mechanism nope"),
    (["--levels", "model", "--resolutions", "200"], "not a positive multiple of the patch size 16"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    pytest.param(["--device", "cuda:0"], "--device: cuda:0: this machine has no CUDA device", marks=NO_CUDA),
    (["--device", "banana"], "--device: not a device: 'banana'"),
    (["--device", "meta"], "--device: meta: computes nothing here"),
    (["--repeats", "zero"], "--repeats: expected an int, got 'zero'"),
    (["--repeats", "0"], "--repeats: must be >= 1, got 0"),
    (["--dim", "30", "--heads", "4"], "dim=30 is not divisible by heads=4"),
    (["--heads", "0"], "--heads: must be >= 1, got 0"),
    (["--heads", "-4"], "--heads: must be >= 1, got -4"),
    (["--dim", "0"], "--dim: must be >= 1, got 0"),
    (["--dim", "-4"], "--dim: must be >= 1, got -4"),
    (["--sides", "16", "0"], "--sides: must be >= 1, got 0"),
    (["--cell-budget", "nan"], "--cell-budget: must be finite, got nan"),
    (["--cell-budget", "-1"], "--cell-budget: must be >= 0, got -1"),
    (["--layout", "vit_giant"], "unknown layout 'vit_giant'"),
    (["--backbones", "resnet50"], "unknown backbone 'resnet50'"),
]

TRAIN_CASES = [
    (["--patch", "0"], "--patch: must be >= 1, got 0"),
    (["--patch", "-1"], "--patch: must be >= 1, got -1"),
    (["--patch", "3"], "--patch 3 does not divide the task's 8x8 images"),
    (["--dim", "0"], "--dim: must be >= 1, got 0"),
    (["--dim", "30", "--heads", "4"], "--dim 30 does not split into --heads 4"),
    (["--depth", "-1"], "--depth: must be >= 1, got -1"),
    (["--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["--epochs", "-3"], "--epochs: must be >= 1, got -3"),
    (["--train-samples", "-5"], "--train-samples: must be >= 1, got -5"),
    (["--task", "pathfinder32", "--train-samples", "0"], "--train-samples: must be >= 1, got 0"),
    (["--label-smoothing", "2"], "--label-smoothing: must be in [0, 1), got 2"),
    (["--lr", "0"], "--lr: must be > 0, got 0"),
    (["--lr", "nan"], "--lr: must be finite, got nan"),
    (["--device", "foo"], "--device: not a device: 'foo'"),
    (["--device", "meta"], "--device: meta: computes nothing here"),
    pytest.param(["--device", "cuda"], "--device: cuda: this machine has no CUDA device", marks=NO_CUDA),
    (["--task", "cifar10"], "unknown task 'cifar10'"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--task", "folder:/nonexistent"], "/nonexistent/train does not exist"),
    (["--resume", "/nonexistent/last.pt"], "no checkpoint at /nonexistent/last.pt"),
    (["--task", "fashion-mnist", "--data-dir", "/nonexistent"], "apt-get install dataset-fashion-mnist"),
    (["--task", "pathfinder32", "--path-length", "0"], "--path-length: must be >= 1, got 0"),
]

EXPORT_CASES = [
    (["vit_elfatt_tiny_patch16_224", "--size", "0"], "--size: must be >= 1, got 0"),
    (["vit_elfatt_tiny_patch16_224", "--size", "64", "64", "64"], "--size takes H or H W"),
    (["vit_elfatt_tiny_patch16_224", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["vit_elfatt_tiny_patch16_224", "--num-classes", "-1"], "--num-classes: must be >= 0, got -1"),
    (["no_such_model_224"], "no_such_model_224"),
    (["swin_elfatt_tiny_224", "--size", "100000"], "--size 100000x100000: tracing it needs ~"),
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def _assert_one_line(status: int, error: str, message: str) -> None:
    assert status == 2, error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert message in error, error


@pytest.mark.parametrize(("argv", "message"), BENCH_CASES)
def test_bench_refuses_bad_input(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, error = _run(["bench", *argv, "--out", str(tmp_path / "out")], capsys)
    _assert_one_line(status, error, message)
    assert error.startswith("elfatt bench: error: ") and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), TRAIN_CASES)
def test_train_refuses_bad_input(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ELFATT_DATA_DIR", str(tmp_path / "cache"))
    status, error = _run(["train", *argv, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    _assert_one_line(status, error, message)
    assert error.startswith("elfatt train: error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("argv", "message"), EXPORT_CASES)
def test_export_refuses_bad_input(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, error = _run(["export", *argv, "--out", str(tmp_path / "model.onnx")], capsys)
    _assert_one_line(status, error, message)
    assert not (tmp_path / "model.onnx").exists()


def _bad_outputs(tmp_path):
    """``--out`` values no command can write: an existing file, a path under a file, a pseudo file system."""
    existing = tmp_path / "existing-file"
    existing.write_text("not a folder")
    return [
        (existing, "exists and is not a folder"),
        (existing / "run", f"cannot be made: {existing} is a file"),
        ("/proc/elfatt-out", "cannot be written: /proc"),
    ]


@pytest.mark.parametrize("command", ["bench", "train"])
@pytest.mark.parametrize("case", range(3))
def test_an_output_folder_that_cannot_be_written_is_refused_first(command, case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, message = _bad_outputs(tmp_path)[case]
    status, error = _run([command, "--out", str(out)], capsys)
    _assert_one_line(status, error, f"--out: {out} {message}")


@pytest.mark.parametrize("case", range(2))
def test_an_onnx_file_that_cannot_be_written_is_refused_first(case, tmp_path, capsys):
    existing = tmp_path / "existing-file"
    existing.write_text("not a folder")
    out, message = [
        (tmp_path, "is a folder; give the file's path"),
        (existing / "m.onnx", f"cannot write m.onnx: {existing} exists and is not a folder"),
    ][case]
    status, error = _run(["export", "vit_elfatt_tiny_patch16_224", "--out", str(out)], capsys)
    _assert_one_line(status, error, message)


def test_an_unwritable_data_cache_is_refused_before_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ELFATT_DATA_DIR", "/proc/elfatt-cache")
    status, error = _run(["train", "--task", "listops", "--out", str(tmp_path / "out")], capsys)
    _assert_one_line(status, error, "the data cache ($ELFATT_DATA_DIR or ~/.cache/elfatt_lab/data): /proc/elfatt-cache")


def test_the_process_exits_2_with_one_line():
    """One real process, for the exit status a shell sees."""
    result = subprocess.run(
        [sys.executable, "-m", "elfatt_lab.cli", "bench", "--device", "banana"], capture_output=True
    )
    assert result.returncode == 2 and result.stderr.decode().count("\n") == 1, result.stderr
