"""``python -m elfatt_lab.diffusion.bench`` on PixArt-Sigma's transformer (one layer, a small latent)."""

from __future__ import annotations

import csv
import math

import torch

from elfatt_lab.diffusion.bench import PIXART_SIGMA_CONFIG, build_pixart, main


def test_pixart_sigma_is_built_at_its_real_width_with_fewer_layers():
    model = build_pixart(layers=1)
    assert len(model.transformer_blocks) == 1
    attention = model.transformer_blocks[0].attn1
    assert attention.heads == PIXART_SIGMA_CONFIG["num_attention_heads"] == 16
    assert attention.to_q.out_features == 16 * 72


def test_the_bench_writes_one_row_per_latent_and_variant(tmp_path, capsys):
    argv = ["--model", "pixart-sigma", "--layers", "1", "--latents", "8x12", "--ratios", "0.5", "0"]
    assert main([*argv, "--repeats", "1", "--batch", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "diffusion.csv").open()))
    assert [row["variant"] for row in rows] == ["original", "elfatt ratio=0.5", "elfatt ratio=0"]
    assert all(row["model"] == "pixart-sigma" and row["latent"] == "8x12" for row in rows)
    assert float(rows[0]["step_speedup"]) == 1.0 and float(rows[0]["relative_difference"]) == 0.0
    # the patched rows moved the output, a little (random weights)
    assert all(0.0 < float(row["relative_difference"]) < 1.0 for row in rows[1:])
    assert all(math.isfinite(float(row["step_ms"])) for row in rows)
    assert "PixArt-Sigma transformer, 1 of 28 layers" in capsys.readouterr().out


def test_every_denoisers_inputs_fit_its_latent():
    from elfatt_lab.diffusion.bench import DENOISERS

    generator = torch.Generator().manual_seed(0)
    (sample, *_), _ = DENOISERS["sd3-medium"].inputs(2, (8, 12), generator)
    assert sample.shape == (2, 16, 8, 12)
    (tokens,), options = DENOISERS["flux1"].inputs(1, (8, 12), generator)
    # FLUX packs 2x2 latent patches: a 4x6 grid, its ids row-major
    assert tokens.shape == (1, 24, 64) and options["img_ids"][-1].tolist() == [0.0, 3.0, 5.0]
    assert options["encoder_hidden_states"].shape[1] == options["txt_ids"].shape[0]
    assert {name: DENOISERS[name].describe(2) for name in ("sd15", "flux1")} == {
        "sd15": "SD 1.5 UNet",
        "flux1": "FLUX.1 transformer, 2 double- and 2 single-stream blocks",
    }


def test_variants_are_timed_in_turn_round_after_round(monkeypatch):
    import elfatt_lab.diffusion.bench as bench
    from elfatt.diffusion.patch import patch_config

    model = build_pixart(layers=1)
    (sample,), options = bench.DENOISERS["pixart-sigma"].inputs(1, (8, 12), torch.Generator().manual_seed(0))
    seen = []
    real = bench._timed_call

    def recording(clocked, step):
        config = patch_config(model)
        seen.append(None if config is None else config.ratio)
        return real(clocked, step)

    monkeypatch.setattr(bench, "_timed_call", recording)
    variants = {"original": None, "a": dict(ratio=0.5, block=2), "b": dict(ratio=0.0, block=2)}
    result = bench.interleaved_steps(model, model, lambda: model(sample, **options).sample, variants, rounds=2)
    # a warm-up step each, then two rounds of the three in turn
    assert seen == [None, 0.5, 0.0] * 3
    assert result["original"]["relative_difference"] == 0 and result["b"]["relative_difference"] > 0
    assert all(row["step_spread"] >= 0 and row["step_ms"] > 0 for row in result.values())
    assert patch_config(model) is None


def test_the_bench_runs_in_bfloat16(tmp_path):
    argv = ["--model", "pixart-sigma", "--layers", "1", "--latents", "8x8", "--ratios", "0", "--dtype", "bfloat16"]
    assert main([*argv, "--repeats", "1", "--batch", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "diffusion.csv").open()))
    assert [row["dtype"] for row in rows] == ["bfloat16", "bfloat16"]
    assert 0.0 < float(rows[1]["relative_difference"]) < 1.0


def test_blocks_and_splits_make_a_grid_of_named_variants(tmp_path):
    argv = ["--model", "pixart-sigma", "--layers", "1", "--latents", "8x8", "--ratios", "0", "--block", "2", "4"]
    assert main([*argv, "--split", "0.25", "0.5", "--repeats", "1", "--batch", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "diffusion.csv").open()))
    assert [row["variant"] for row in rows] == ["original"] + [
        f"elfatt ratio=0 block={block} split={split}" for block in (2, 4) for split in ("0.25", "0.5")
    ]
