"""python -m elfatt_lab.bench.compiled through Dynamo's eager backend (no Inductor build in the tests)."""

from __future__ import annotations

import argparse
import csv

import pytest

from elfatt_lab.bench.compiled import compile_cells, main


def test_eager_and_compiled_side_by_side(tmp_path, capsys):
    argv = ["--mechanisms", "elfatt", "--sides", "6", "--backbones", "--resolutions", "--rounds", "1"]
    assert main([*argv, "--backend", "eager", "--no-progress", "--out", str(tmp_path)]) == 0
    with (tmp_path / "compiled.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["level"], row["mechanism"], row["size"], row["run_pass"]) == ("op", "elfatt", "6x6", "fwd")
    assert float(row["compile_speedup"]) == pytest.approx(float(row["eager_ms"]) / float(row["compiled_ms"]))
    # The compiled graph calls the registered op, which runs the eager kernels.
    assert float(row["relative_difference"]) < 1e-5
    assert "| op | elfatt | 6x6 |" in (tmp_path / "compiled.md").read_text()
    assert "backend eager" in capsys.readouterr().out


def test_plan_has_op_cells_then_model_cells():
    args = argparse.Namespace(mechanisms=["sdpa", "elfatt"], sides=[8, 16], passes=["fwd"])
    args.backbones, args.resolutions = ["swin_elfatt_tiny_hr"], [64]
    cells = compile_cells(args)
    assert [(c.level, c.mechanism, c.size_label) for c in cells] == [
        ("op", "sdpa", "8x8"),
        ("op", "elfatt", "8x8"),
        ("op", "sdpa", "16x16"),
        ("op", "elfatt", "16x16"),
        ("model", "swin_elfatt_tiny_hr", "64px"),
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mechanisms", "nope"], "unknown mechanism"),
        (["--backbones", "nope"], "unknown backbone"),
        (["--backbones", "timm+elfatt:swin_tiny_patch4_window7_224"], "vit_"),
        (["--batch", "0"], "--batch"),
    ],
)
def test_bad_names_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_a_patched_timm_vit_is_a_backbone(tmp_path):
    """timm's ViT patched with ELFATT (patch_timm_vit), compiled and eager side by side, batch 2."""
    argv = ["--mechanisms", "--backbones", "timm+elfatt:vit_tiny_patch16_224", "--resolutions", "64", "--batch", "2"]
    assert main([*argv, "--rounds", "1", "--backend", "eager", "--no-progress", "--out", str(tmp_path)]) == 0
    with (tmp_path / "compiled.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["mechanism"], row["size"]) == ("timm+elfatt:vit_tiny_patch16_224", "64px")
    assert float(row["relative_difference"]) < 1e-5
