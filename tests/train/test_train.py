"""elfatt train: a step of each task, exact resume, a 2-process DDP run, image folders, bad options."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elfatt.train import TrainConfig, train
from elfatt.train.cli import main
from elfatt.train.experiments import MECHANISMS as DEFAULT_MECHANISMS
from elfatt.train.experiments import PRESETS

TINY = dict(epochs=1, batch_size=32, dim=16, depth=1, heads=2, progress=False)


def test_digits_run_writes_checkpoints_log_and_curves(tmp_path):
    history = train(TrainConfig(task="digits", model="elfatt", out=tmp_path, **TINY))
    assert len(history) == 1 and 0.0 <= history[0]["val_acc"] <= 1.0
    assert {"last.pt", "best.pt", "log.csv", "curves.png"} <= {path.name for path in tmp_path.iterdir()}
    with (tmp_path / "log.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["epoch_seconds"]) > 0 and float(row["peak_mib"]) > 0


@pytest.mark.parametrize("model", ["vanilla", "elfatt-window", "elfatt-linear", "efficient"])
def test_every_ablation_trains_a_step(model, tmp_path):
    history = train(TrainConfig(task="digits", model=model, out=tmp_path, **TINY))
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_resume_continues_exactly(tmp_path):
    options = dict(task="digits", model="elfatt", batch_size=64, dim=16, depth=1, heads=2, progress=False)
    straight = train(TrainConfig(epochs=2, out=tmp_path / "straight", **options))
    train(TrainConfig(epochs=1, out=tmp_path / "first", **options))
    resumed = train(TrainConfig(epochs=2, out=tmp_path / "resumed", resume=tmp_path / "first" / "last.pt", **options))
    assert [row["epoch"] for row in resumed] == [1, 2]
    assert resumed[1]["train_loss"] == straight[1]["train_loss"]
    assert resumed[1]["val_acc"] == straight[1]["val_acc"]


def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "elfatt.train", "--task", "digits", "--model", "elfatt", "--epochs", "1", "--batch-size", "32",
        "--dim", "16", "--depth", "1", "--heads", "2", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("epoch 1/1") == 1
    assert (out / "last.pt").is_file()


def _write_folder(root: Path, generator: torch.Generator) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for index in range(4):
                pixels = (torch.rand(20, 28, 3, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")


def test_image_folder_task(tmp_path):
    _write_folder(tmp_path / "images", torch.Generator().manual_seed(0))
    config = TrainConfig(
        task=f"folder:{tmp_path / 'images'}", model="elfatt", image_size=16, patch=4, out=tmp_path / "run", **TINY
    )
    history = train(config)
    assert len(history) == 1


def test_backbone_model_on_images(tmp_path):
    _write_folder(tmp_path / "images", torch.Generator().manual_seed(1))
    config = TrainConfig(
        task=f"folder:{tmp_path / 'images'}", model="swin_elfatt_tiny_224", image_size=32, out=tmp_path / "run", **TINY
    )
    assert len(train(config)) == 1


def test_unknown_pool_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--pool", "avg"])
    assert exit_info.value.code == 2 and "invalid choice: 'avg'" in capsys.readouterr().err
    from elfatt.train.model import SmallTransformer
    from elfatt.train.tasks import build_task

    with pytest.raises(ValueError, match="unknown pool 'avg'"):
        SmallTransformer(build_task("digits"), "elfatt", pool="avg")


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_feeds_the_head_the_token_mean_or_max(pool):
    from elfatt.train.model import SmallTransformer
    from elfatt.train.tasks import build_task

    task = build_task("digits")
    torch.manual_seed(0)
    model = SmallTransformer(task, "elfatt", dim=16, depth=1, heads=2, pool=pool).eval()
    tokens = {}
    model.norm.register_forward_hook(lambda module, inputs, output: tokens.setdefault("out", output))
    images = torch.randn(3, 1, 8, 8)
    logits = model(images)
    pooled = tokens["out"].mean(dim=1) if pool == "mean" else tokens["out"].max(dim=1).values
    torch.testing.assert_close(logits, model.head(pooled), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_experiment_preset_is_a_valid_config(name):
    from elfatt.attention import MECHANISMS

    options = {key: value for key, value in PRESETS[name].items() if key != "mechanisms"}
    config = TrainConfig(**options)
    assert config.task in ("digits", "pathfinder32", "listops")
    assert set(PRESETS[name].get("mechanisms", DEFAULT_MECHANISMS)) <= set(MECHANISMS)


def test_experiments_add_seeds_to_earlier_runs_of_the_same_settings(tmp_path):
    from elfatt.train.experiments import main as experiments

    def seeds_in_summary() -> list[tuple[str, str]]:
        with (tmp_path / "runs.csv").open() as handle:
            return [(row["mechanism"], row["seed"]) for row in csv.DictReader(handle)]

    argv = ["--task", "digits", "--mechanisms", "elfatt", "--epochs", "1", "--out", str(tmp_path)]
    assert experiments([*argv, "--seeds", "0"]) == 0
    assert experiments([*argv, "--seeds", "1"]) == 0
    assert seeds_in_summary() == [("elfatt", "0"), ("elfatt", "1")]
    summary = (tmp_path / "summary.md").read_text()
    assert "--seeds 0 1`" in summary
    (elfatt_line,) = [line for line in summary.splitlines() if line.startswith("| elfatt |")]
    assert elfatt_line.split(" | ")[2].count(",") == 1 and elfatt_line.endswith("| 2 |")
    assert experiments([*argv, "--seeds", "1"]) == 0
    assert seeds_in_summary() == [("elfatt", "0"), ("elfatt", "1")]
    summary = (tmp_path / "summary.md").read_text()
    (tmp_path / "summary.md").unlink()
    assert experiments([*argv, "--summarize"]) == 0
    assert (tmp_path / "summary.md").read_text() == summary
    # Other settings: the earlier runs are not comparable and leave the summary.
    assert experiments([*argv[:4], "--epochs", "2", "--out", str(tmp_path), "--seeds", "2"]) == 0
    assert seeds_in_summary() == [("elfatt", "2")]
    with pytest.raises(SystemExit):
        experiments([*argv[:4], "--epochs", "3", "--out", str(tmp_path), "--summarize"])


def test_experiments_write_a_summary(tmp_path):
    from elfatt.train.experiments import main as experiments

    argv = ["--task", "digits", "--mechanisms", "elfatt", "vanilla", "--seeds", "0", "--epochs", "1"]
    assert experiments([*argv, "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| elfatt |" in summary and "| vanilla |" in summary
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    with (tmp_path / "runs.csv").open() as handle:
        assert [row["mechanism"] for row in csv.DictReader(handle)] == ["elfatt", "vanilla"]


@pytest.mark.parametrize("task", ["pathfinder32", "listops"])
def test_lra_tasks_train_a_step(task, tmp_path, monkeypatch):
    monkeypatch.setenv("ELFATT_DATA_DIR", str(tmp_path / "cache"))
    config = TrainConfig(
        task=task, model="elfatt", train_samples=16, val_samples=8, max_length=64, out=tmp_path, **TINY
    )
    history = train(config)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    assert any((tmp_path / "cache").iterdir())


def test_pathfinder_path_length_is_its_own_cached_set(tmp_path, monkeypatch):
    from elfatt.train.tasks import build_task

    monkeypatch.setenv("ELFATT_DATA_DIR", str(tmp_path))
    lra = build_task("pathfinder32", train_samples=4, val_samples=2)
    easy = build_task("pathfinder32", train_samples=4, val_samples=2, path_length=6)
    assert len(list(tmp_path.iterdir())) == 4
    assert not torch.equal(lra.train.tensors[0], easy.train.tensors[0])
    again = build_task("pathfinder32", train_samples=4, val_samples=2, path_length=6)
    assert torch.equal(again.train.tensors[0], easy.train.tensors[0])


def test_missing_optional_dependency_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["--task", "digits", "--out", str(tmp_path), "--no-progress"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "elfatt train: error: the digits task needs scikit-learn: pip install 'elfatt[train]'"
    )
