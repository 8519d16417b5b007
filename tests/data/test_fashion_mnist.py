"""Fashion-MNIST's idx reader, splits and augmentation, on small idx files written here (and the real files when
Debian's dataset-fashion-mnist is installed)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fashion_files import write_fashion_files, write_idx

from elfatt_lab.data.fashion_mnist import DEBIAN_DIR, RandomCropFlip, fashion_mnist, fashion_mnist_dir, read_idx
from elfatt_lab.train import TrainConfig, train


def test_idx_files_are_read_exactly(tmp_path):
    array = torch.randint(256, (3, 5, 7), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    write_idx(tmp_path / "a", array)
    write_idx(tmp_path / "b", array, gz=False)
    assert torch.equal(read_idx(tmp_path / "a.gz", 3), array) and torch.equal(read_idx(tmp_path / "b", 3), array)
    with pytest.raises(ValueError, match="not an idx file of 1-d"):
        read_idx(tmp_path / "b", 1)
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:-3])
    with pytest.raises(ValueError, match="holds 102 bytes for a 3x5x7 array"):
        read_idx(tmp_path / "c", 3)


def test_splits_are_disjoint_seeded_and_normalised_by_the_training_split(tmp_path):
    write_fashion_files(tmp_path)
    train_set, val_set, test_set = (fashion_mnist(s, val_size=12, data_dir=tmp_path) for s in ("train", "val", "test"))
    assert (len(train_set), len(val_set), len(test_set)) == (48, 12, 20)
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz", 3).double() / 255
    raw_labels = read_idx(tmp_path / "train-labels-idx1-ubyte.gz", 1).long()
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))  # the documented seeded draw
    val_index, train_index = order[:12], order[12:]
    mean, std = raw[train_index].mean(), raw[train_index].std()
    for dataset, index in ((train_set, train_index), (val_set, val_index)):
        images, labels = dataset.tensors
        assert images.shape == (len(index), 1, 28, 28) and labels.dtype == torch.long
        torch.testing.assert_close(images[:, 0].double(), (raw[index] - mean) / std, rtol=0, atol=1e-5)
        assert torch.equal(labels, raw_labels[index])
    test_raw = read_idx(tmp_path / "t10k-images-idx3-ubyte", 3).double() / 255
    torch.testing.assert_close(test_set.tensors[0][:, 0].double(), (test_raw - mean) / std, rtol=0, atol=1e-5)
    assert abs(train_set.tensors[0].mean().item()) < 1e-5 and abs(train_set.tensors[0].std().item() - 1) < 1e-5
    other = fashion_mnist("val", val_size=12, seed=1, data_dir=tmp_path)
    assert not torch.equal(other.tensors[0], val_set.tensors[0])


def test_missing_files_name_the_package_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("ELFATT_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(ValueError, match=r"apt-get install dataset-fashion-mnist") as error:
        fashion_mnist_dir(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)
    write_fashion_files(tmp_path / "set")
    monkeypatch.setenv("ELFATT_FASHION_MNIST_DIR", str(tmp_path / "set"))
    assert fashion_mnist_dir() == tmp_path / "set"


def test_augmentation_crops_and_flips_with_torch_draws(tmp_path):
    image = torch.arange(28.0 * 28).reshape(1, 1, 28, 28)
    dataset = RandomCropFlip(torch.utils.data.TensorDataset(image, torch.zeros(1, dtype=torch.long)), padding=2)
    torch.manual_seed(0)
    draws = [dataset[0][0] for _ in range(20)]
    torch.manual_seed(0)
    assert all(torch.equal(a, dataset[0][0]) for a in draws)
    assert all(d.shape == (1, 28, 28) for d in draws) and len({d.sum().item() for d in draws}) > 1
    # Pixels grow left to right, so a flipped draw is the one whose row decreases.
    flips = [bool(d[0, 14, 10] > d[0, 14, 11]) for d in draws]
    assert any(flips) and not all(flips)


def test_training_reports_the_test_split_once_at_the_end(tmp_path, monkeypatch):
    write_fashion_files(tmp_path / "set", train_count=80, test_count=30)
    options = dict(epochs=2, batch_size=16, dim=16, depth=1, heads=2, patch=4, val_samples=20, progress=False)
    history = train(TrainConfig(task="fashion-mnist", data_dir=tmp_path / "set", out=tmp_path / "run", **options))
    assert len(history) == 2 and all("test_acc" not in row for row in history)
    results = json.loads((tmp_path / "run" / "test.json").read_text())
    assert set(results) == {"final", "best_val"} and results["final"]["epoch"] == 2
    assert results["final"]["test_images"] == 30 and 0 <= results["best_val"]["test_acc"] <= 1


def test_a_training_subset_is_a_seeded_draw_of_the_training_split_only(tmp_path):
    from elfatt_lab.train.tasks import build_task

    write_fashion_files(tmp_path / "set", train_count=80, test_count=30)
    whole = build_task("fashion-mnist", val_samples=20, data_dir=tmp_path / "set")
    part = build_task("fashion-mnist", val_samples=20, train_subset=25, data_dir=tmp_path / "set")
    again = build_task("fashion-mnist", val_samples=20, train_subset=25, data_dir=tmp_path / "set")
    other = build_task("fashion-mnist", val_samples=20, train_subset=25, seed=1, data_dir=tmp_path / "set")
    assert len(whole.train) == 60 and len(part.train) == 25
    assert part.train.indices == again.train.indices != other.train.indices
    assert len(set(part.train.indices)) == 25
    assert torch.equal(part.val.tensors[0], whole.val.tensors[0]) and len(part.test) == 30
    picked = torch.stack([part.train[i][0] for i in range(25)])
    assert torch.equal(picked, whole.train.tensors[0][part.train.indices])
    with pytest.raises(ValueError, match="train_subset 61 exceeds the 60 training images of fashion-mnist"):
        build_task("fashion-mnist", val_samples=20, train_subset=61, data_dir=tmp_path / "set")


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_files(monkeypatch):
    monkeypatch.delenv("ELFATT_FASHION_MNIST_DIR", raising=False)
    test_set = fashion_mnist("test")
    images, labels = test_set.tensors
    assert images.shape == (10_000, 1, 28, 28) and labels.bincount().tolist() == [1000] * 10
    assert len(fashion_mnist("train")) == 55_000 and len(fashion_mnist("val")) == 5_000


def test_the_experiment_reports_test_accuracy_throughput_and_the_frontier(tmp_path, monkeypatch):
    from elfatt_lab.train import experiments

    write_fashion_files(tmp_path / "set", train_count=120, test_count=40)
    monkeypatch.setenv("ELFATT_FASHION_MNIST_DIR", str(tmp_path / "set"))
    small = dict(experiments.PRESETS["fashion-mnist"], batch_size=32, dim=16, depth=1, val_samples=40)
    monkeypatch.setitem(experiments.PRESETS, "fashion-mnist", small)
    argv = ["--task", "fashion-mnist", "--mechanisms", "elfatt", "sdpa-lepe", "--seeds", "0", "--epochs", "1"]
    assert experiments.main([*argv, "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert "test acc, final model" in summary[2] and "inference img/s" in summary[2]
    assert summary[3].count("|---") == summary[2].count(" | ") + 1
    table = summary[4 : summary.index("", 4)]
    rows = {line.split(" | ")[0].strip("| "): line for line in table}
    assert set(rows) == {"elfatt", "sdpa-lepe"}
    assert "- `elfatt`: ELFATT, fixed 8x8 blocks (linear in tokens)" in summary
    for name in ("accuracy.png", "accuracy_vs_throughput.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    (run,) = [row for row in csv.DictReader((tmp_path / "out" / "runs.csv").open()) if row["mechanism"] == "elfatt"]
    assert 0 <= float(run["test_acc"]) <= 1 and float(run["infer_images_per_s"]) > 0
    assert float(run["train_images_per_s"]) > 0
    assert rows["elfatt"].split(" | ")[-2] == f"{float(run['wall_seconds']) / 60:.1f}"
    # Side by side: the table's images/s then come from throughput.csv, marked and explained.
    assert experiments.main([*argv, "--throughput", "--out", str(tmp_path / "out")]) == 0
    measured = {row["mechanism"]: row for row in csv.DictReader((tmp_path / "out" / "throughput.csv").open())}
    assert set(measured) == {"elfatt", "sdpa-lepe"} and all(float(row["rounds"]) == 5 for row in measured.values())
    low, high = (int(percent) for percent in measured["elfatt"]["train_spread_pct"].split("/"))
    assert low <= 0 <= high
    summary = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert "train img/s † | inference img/s †" in summary[2]
    elfatt_row = next(line for line in summary if line.startswith("| elfatt |")).split(" | ")
    assert elfatt_row[6] == f"{float(measured['elfatt']['infer_images_per_s']):.0f}"
    assert any(line.startswith("† measured side by side") for line in summary)
