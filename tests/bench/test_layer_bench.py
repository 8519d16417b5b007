"""python -m elfatt_lab.bench.layer on tiny grids: the table's ratios are what its own columns say."""

from __future__ import annotations

import csv

import pytest
import torch

from elfatt.modules import ELFATTAttention
from elfatt_lab.bench.layer import _Linears, main


def test_writes_the_layer_against_timm_and_its_linears(tmp_path, capsys):
    argv = ["--grids", "5x7:2", "4x4:1", "--dim", "32", "--heads", "4", "--block", "3", "--threads", "1",
            "--rounds", "1", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    with (tmp_path / "layer.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["grid"], row["run_pass"]) for row in rows] == [
        ("5x7", "fwd"), ("5x7", "fwd+bwd"), ("4x4", "fwd"), ("4x4", "fwd+bwd")
    ]  # fmt: skip
    for row in rows:
        assert float(row["elfatt / linears"]) == pytest.approx(float(row["elfatt ms"]) / float(row["linears ms"]))
        assert float(row["speed-up vs timm"]) == pytest.approx(float(row["timm ms"]) / float(row["elfatt ms"]))
        assert int(row["elfatt ops"]) > int(row["elfatt compute ops"]) > 0
    assert "| 1 | 5x7 | 2 | fwd |" in (tmp_path / "layer.md").read_text()
    assert "speed-up vs timm" in capsys.readouterr().out
    assert torch.get_num_threads() >= 1


def test_the_linears_are_the_layers_own():
    layer = ELFATTAttention(16, 2)
    x = torch.randn(1, 6, 16)
    torch.testing.assert_close(_Linears(layer)(x), layer.proj(layer.qkv(x)[..., :16]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dim", "30", "--heads", "4"], "--dim must divide"),
        (["--grids", "14x14"], "HxW:BATCH"),
        (["--threads", "0"], "--threads"),
    ],  # fmt: skip
)
def test_bad_options_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
