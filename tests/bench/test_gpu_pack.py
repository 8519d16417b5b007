"""The GPU evidence pack's plan, checked on CPU: every step names a command that exists and parses."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from elfatt_lab.bench import gpu
from elfatt_lab.bench.cli import add_arguments

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_writes_a_plan_that_fits_a_short_loan(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path), "--dry-run"]) == 0
    steps = json.loads((tmp_path / "plan.json").read_text())
    assert [step["name"] for step in steps] == ["cuda-tests", "kernels", "bench-bf16", "bench-bf16-compile"]
    assert sum(step["timeout_s"] for step in steps) <= 10 * 60
    assert "at most 540 s" in capsys.readouterr().out


def test_every_step_runs_something_that_exists(tmp_path, monkeypatch):
    # The bench's --device refuses cuda on a machine without it; the plan is for one with it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    bench = argparse.ArgumentParser()
    add_arguments(bench)
    for step in gpu.plan(tmp_path, python="python"):
        module = step.argv[2]
        assert step.argv[:2] == ["python", "-m"] and importlib.util.find_spec(module) is not None, step.name
        if module == "pytest":
            paths = [arg for arg in step.argv[3:] if arg.endswith(".py")]
            assert paths and all((ROOT / path).is_file() for path in paths)
            assert step.env == {"TRITON_INTERPRET": "0"}
        elif module == "elfatt_lab.bench":
            options = bench.parse_args(step.argv[3:])
            assert options.device == "cuda" and options.dtype == "bf16" and str(options.out).startswith(str(tmp_path))
            assert options.compile == (step.name == "bench-bf16-compile")
        else:
            assert step.argv[3:] == ["--out", str(tmp_path / "kernels.csv")]


def test_steps_can_be_picked_and_unknown_ones_are_refused(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path), "--dry-run", "--steps", "kernels"]) == 0
    assert [step["name"] for step in json.loads((tmp_path / "plan.json").read_text())] == ["kernels"]
    with pytest.raises(SystemExit):
        gpu.main(["--out", str(tmp_path), "--dry-run", "--steps", "warp"])
    assert "unknown step 'warp'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == "python -m elfatt_lab.bench.gpu: error: needs a CUDA GPU (--dry-run shows the plan)"
    )
