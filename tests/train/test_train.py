"""elfatt train: a step of each task, exact resume, a 2-process DDP run, image folders, bad options."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elfatt_lab.train import TrainConfig, train
from elfatt_lab.train.cli import main
from elfatt_lab.train.experiments import MECHANISMS as DEFAULT_MECHANISMS
from elfatt_lab.train.experiments import NOT_OPTIONS, PRESETS

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
        "-m", "elfatt_lab.train", "--task", "digits", "--model", "elfatt", "--epochs", "1", "--batch-size", "32",
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
    from elfatt_lab.train.model import SmallTransformer
    from elfatt_lab.train.tasks import build_task

    with pytest.raises(ValueError, match="unknown pool 'avg'"):
        SmallTransformer(build_task("digits"), "elfatt", pool="avg")


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_feeds_the_head_the_token_mean_or_max(pool):
    from elfatt_lab.train.model import SmallTransformer
    from elfatt_lab.train.tasks import build_task

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
    from elfatt_lab.attention import MECHANISMS

    options = {key: value for key, value in PRESETS[name].items() if key not in NOT_OPTIONS}
    config = TrainConfig(**options)
    from elfatt_lab.train.tasks import TASKS

    assert config.task in TASKS
    assert set(PRESETS[name].get("mechanisms", DEFAULT_MECHANISMS)) <= set(MECHANISMS)


def test_experiments_add_seeds_to_earlier_runs_of_the_same_settings(tmp_path):
    from elfatt_lab.train.experiments import main as experiments

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
    # A clone has the committed run.json files but no checkpoints (ignored by git): the runs stay.
    for checkpoint in tmp_path.glob("*/*.pt"):
        checkpoint.unlink()
    assert experiments([*argv, "--summarize"]) == 0
    assert (tmp_path / "summary.md").read_text() == summary
    record = json.loads((tmp_path / "elfatt-seed0" / "run.json").read_text())
    assert record["epochs_trained"] == 1 and record["settings"]["model"] == "elfatt" and "out" not in record["settings"]
    # Other settings: the earlier runs are not comparable and leave the summary.
    assert experiments([*argv[:4], "--epochs", "2", "--out", str(tmp_path), "--seeds", "2"]) == 0
    assert seeds_in_summary() == [("elfatt", "2")]
    with pytest.raises(SystemExit):
        experiments([*argv[:4], "--epochs", "3", "--out", str(tmp_path), "--summarize"])


def test_experiments_write_a_summary(tmp_path):
    from elfatt_lab.train.experiments import main as experiments

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
    from elfatt_lab.train.tasks import build_task

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


def _decay_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("name", ["swin", "elfatt", "vit_elfatt_tiny_patch16_224"])
def test_weight_decay_skips_biases_norms_and_what_the_model_names(name):
    from elfatt_lab.train.loop import build_optimizer
    from elfatt_lab.train.model import build_model
    from elfatt_lab.train.tasks import build_task

    task = build_task("digits")
    if name.startswith("vit"):
        from elfatt.models import create_model

        model = create_model(name, depth=1, num_classes=10)
    else:
        model = build_model(name, task, dim=16, depth=1, heads=2, patch=1)
    decay = _decay_of(build_optimizer(model, TrainConfig(weight_decay=0.05)), model)
    assert decay.keys() == {name for name, _ in model.named_parameters()}
    skipped = {key for key, value in decay.items() if value == 0.0}
    assert {"pos_embed", "norm.weight", "norm.bias", "head.bias"} <= skipped
    assert set(model.no_weight_decay()) & set(decay) <= skipped and "head.weight" not in skipped
    assert all(decay[key] == 0.05 for key in decay if key.endswith((".qkv.weight", "fc1.weight", ".0.weight")))
    if name == "swin":
        assert "blocks.0.attn.relative_position_bias_table" in skipped
    if name.startswith("vit"):
        assert "cls_token" in skipped


def _uniform_folder(root: Path, value: int) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for index in range(2):
                pixels = torch.full((20, 28, 3), value, dtype=torch.uint8)
                pixels[:, : 6 * (index + 1)] = 255 - value  # a stripe, so that crops and flips differ
                Image.fromarray(pixels.numpy()).save(root / split / label / f"{index}.png")


def test_folder_images_are_normalised_and_augmented_on_request(tmp_path):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from elfatt_lab.train.tasks import build_task

    _uniform_folder(tmp_path, 100)
    plain = build_task(f"folder:{tmp_path}", image_size=16)
    image, _ = plain.val[0]
    corner = image[:, 0, -1]  # the uniform part, after timm's resize and centre crop
    expected = (100 / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(corner, expected, atol=2e-2, rtol=0)
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    augmented = build_task(f"folder:{tmp_path}", image_size=16, augment=True)
    draws = torch.stack([augmented.train[1][0] for _ in range(6)])
    assert draws.shape == (6, 3, 16, 16) and not all(torch.equal(draws[0], draw) for draw in draws[1:])
    assert torch.equal(augmented.val[1][0], plain.val[1][0])


def test_augmented_training_resumes_exactly(tmp_path):
    _write_folder(tmp_path / "images", torch.Generator().manual_seed(2))
    options = dict(TINY, epochs=2, task=f"folder:{tmp_path / 'images'}", image_size=16, patch=4, augment=True)
    straight = train(TrainConfig(**{**options, "out": tmp_path / "straight"}))
    train(TrainConfig(**{**options, "epochs": 1, "out": tmp_path / "first"}))
    resumed = train(TrainConfig(**{**options, "out": tmp_path / "resumed", "resume": tmp_path / "first" / "last.pt"}))
    assert [row["train_loss"] for row in resumed] == [row["train_loss"] for row in straight]


def test_plot_titles_say_how_many_seeds_each_mechanism_has():
    from elfatt_lab.train.experiments import seeds_label

    three = [dict(mechanism=name, seed=seed) for name in ("elfatt", "sdpa") for seed in range(3)]
    assert seeds_label(three) == "3 seeds"
    assert seeds_label(three[:1]) == "1 seed"
    assert seeds_label(three[:5]) == "2 to 3 seeds per mechanism"


def test_lra_presets_have_lra_sizes():
    listops, pathfinder = PRESETS["lra-listops"], PRESETS["lra-pathfinder32"]
    assert (listops["train_samples"], listops["val_samples"], listops["max_length"]) == (96000, 2000, 2000)
    assert pathfinder["train_samples"] >= 50000 and TrainConfig().path_length == 14


@pytest.mark.parametrize("name", ["lra-listops", "lra-pathfinder32"])
def test_lra_presets_train_at_small_sizes(name, tmp_path, monkeypatch):
    """The preset as it runs, its data shrunk: epochs of a slice, blocks along the sequence, padding left out."""
    monkeypatch.setenv("ELFATT_DATA_DIR", str(tmp_path / "cache"))
    options = {key: value for key, value in PRESETS[name].items() if key not in NOT_OPTIONS}
    small = dict(train_samples=48, val_samples=8, epoch_samples=32, epochs=2, batch_size=16, dim=16, max_length=64)
    history = train(TrainConfig(**{**options, **small}, out=tmp_path / "run", progress=False))
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert (tmp_path / "run" / "test.json").is_file() == (name == "lra-listops")


def test_epoch_slices_walk_through_seeded_passes():
    from elfatt_lab.train.loop import EpochSlices

    def epoch(sampler, number):
        sampler.set_epoch(number)
        return list(sampler)

    sampler = EpochSlices(10, 4, seed=3)
    first, second, third = (epoch(sampler, number) for number in range(3))
    assert len(sampler) == 4 and sorted(first + second + third[:2]) == list(range(10))
    assert sorted(third[2:] + epoch(sampler, 3) + epoch(sampler, 4)) == list(range(10))  # the next pass
    assert third[2:] != first[:2] or epoch(sampler, 3) != first[2:]  # a pass of its own order
    ranks = [EpochSlices(10, 4, world=2, rank=rank, seed=3) for rank in range(2)]
    assert sorted(epoch(ranks[0], 1) + epoch(ranks[1], 1)) == sorted(second)
    with pytest.raises(ValueError, match="divide among the 2 processes"):
        EpochSlices(10, 5, world=2)


def test_padding_is_left_out_of_the_whole_model():
    """More padding at the end changes no logit: attention (every layer) and pooling leave padding out."""
    from elfatt_lab.data.listops import PAD_ID
    from elfatt_lab.train.model import SmallTransformer
    from elfatt_lab.train.tasks import Task

    def model(length):
        task = Task("listops", None, None, 10, "tokens", vocab_size=16, seq_len=length, pad_id=PAD_ID)
        torch.manual_seed(0)
        return SmallTransformer(task, "elfatt", dim=16, depth=2, heads=2, block=4).eval()

    short, long = model(21), model(30)
    long.load_state_dict({**short.state_dict(), "pos_embed": long.pos_embed.detach()})
    long.pos_embed.data[:, :21] = short.pos_embed.detach()
    tokens = torch.randint(1, 16, (3, 21), generator=torch.Generator().manual_seed(1))
    tokens[1, 13:] = PAD_ID
    padded = torch.cat([tokens, torch.full((3, 9), PAD_ID)], dim=1)
    for pool in ("mean", "max"):
        short.pool = long.pool = pool
        torch.testing.assert_close(long(padded), short(tokens))


def test_a_mechanism_that_cannot_leave_padding_out_is_refused():
    from elfatt_lab.train.model import SmallTransformer
    from elfatt_lab.train.tasks import Task

    task = Task("listops", None, None, 10, "tokens", vocab_size=16, seq_len=20, pad_id=0)
    with pytest.raises(ValueError, match="agent cannot leave the padding of listops's sequences out.*elfatt"):
        SmallTransformer(task, "agent", dim=16, depth=1, heads=2)


def test_experiments_resume_unfinished_runs_and_keep_finished_ones(tmp_path, capsys):
    from elfatt_lab.train.experiments import main as experiments

    argv = ["--task", "digits", "--mechanisms", "elfatt", "efficient", "--seeds", "0", "--out", str(tmp_path)]
    assert experiments([*argv, "--epochs", "1"]) == 0
    assert experiments([*argv[:4], "--seeds", "0", "--out", str(tmp_path), "--epochs", "2", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "elfatt-seed0: resuming after epoch 1" in printed and "efficient seed 0: finished before" not in printed
    with (tmp_path / "elfatt-seed0" / "log.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert experiments([*argv, "--epochs", "2", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "elfatt seed 0: finished before, kept" in printed and "efficient-seed0: resuming after epoch 1" in printed


def test_side_by_side_throughput_joins_a_summary_without_a_test_split(tmp_path):
    from elfatt_lab.train.experiments import main as experiments

    argv = ["--task", "digits", "--mechanisms", "elfatt", "efficient", "--seeds", "0", "--epochs", "1"]
    assert experiments([*argv, "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "accuracy_vs_throughput.png").exists()
    assert experiments([*argv, "--throughput", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert "| s / epoch | train img/s † | inference img/s † |" in summary[2]
    assert summary[3].count("|---") == summary[2].count(" | ") + 1
    assert (tmp_path / "accuracy_vs_throughput.png").read_bytes()[:4] == b"\x89PNG"
