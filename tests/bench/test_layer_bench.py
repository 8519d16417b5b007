"""python -m elfatt.bench.layer on a tiny grid: the table's ratios are what its own columns say."""

from __future__ import annotations

import csv

import pytest
import torch

import elfatt
from elfatt.bench.layer import PARTS, layer_callables, main


def test_writes_the_layer_against_its_parts(tmp_path, capsys):
    assert main(["--sides", "12", "10", "--rounds", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    with (tmp_path / "layer_parts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["grid"] for row in rows] == ["12x12", "10x10"]
    for row in rows:
        total = sum(float(row[part]) for part in PARTS)
        assert float(row["sum of parts"]) == pytest.approx(total)
        assert float(row["layer / parts"]) == pytest.approx(float(row["layer"]) / total)
        assert float(row["speed-up"]) == pytest.approx(float(row["head-major layer"]) / float(row["layer"]))
    assert "| 12x12 |" in (tmp_path / "layer_parts.md").read_text()
    assert "layer / parts" in capsys.readouterr().out


def test_the_head_major_form_computes_the_same_layer():
    layer = elfatt.ELFATTAttention(24, 4, block=(3, 2)).eval()
    calls = layer_callables(layer, (7, 5))
    out = calls["layer"]()
    assert out.shape == (1, 35, 24)
    # Both forms read the same random input, so they must agree.
    torch.testing.assert_close(calls["head-major layer"](), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [0.0, 1.0])
def test_a_layer_with_one_part_only_is_refused(split):
    with pytest.raises(ValueError, match="global and block heads"):
        layer_callables(elfatt.ELFATTAttention(16, 2, split=split), (4, 4))


def test_bad_options_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["--dim", "30", "--heads", "4"])
    assert "--dim must divide" in capsys.readouterr().err
