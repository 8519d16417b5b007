"""Bad files on disk: image folders with unreadable images or empty classes, damaged or abandoned cache entries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elfatt_lab.data.cache import cache_path, cached
from elfatt_lab.data.images import ImageFolder, UnreadableImage
from elfatt_lab.train.cli import main as train_main

REPO = Path(__file__).resolve().parents[2]


def _image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in classes:
            (root / split / label).mkdir(parents=True)
            for index in range(per_class):
                pixels = (torch.rand(12, 10, 3, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_an_unreadable_image_is_one_line_naming_the_file(how, tmp_path, capsys):
    _image_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "1.png"
    _damage(bad, how)
    folder = ImageFolder(tmp_path / "train", 8)
    with pytest.raises(UnreadableImage, match=f"cannot read image {bad}: "):
        folder[folder.samples.index((bad, 1))]
    argv = ["--task", f"folder:{tmp_path}", "--model", "elfatt", "--epochs", "1", "--dim", "8", "--heads", "2"]
    argv += ["--image-size", "8", "--no-progress", "--out", str(tmp_path / "run")]
    assert train_main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"cannot read image {bad}" in error, error


def test_unreadable_images_can_be_skipped_with_a_count(tmp_path, capsys):
    _image_folder(tmp_path)
    for index in (0, 2):
        _damage(tmp_path / "train" / "cat" / f"{index}.png", "empty")
    folder = ImageFolder(tmp_path / "train", 8, skip_unreadable=True)
    assert len(folder) == 4 and [label for _, label in folder.samples].count(0) == 1
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and "skipped 2 unreadable image(s)" in notice
    assert all(image.shape == (3, 8, 8) for image, _ in folder)


def test_an_empty_class_folder_is_refused(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "train" / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="class folder.s. without images .* bird; add images or remove"):
        ImageFolder(tmp_path / "train", 8)


def test_a_class_left_empty_by_skipping_is_refused(tmp_path):
    _image_folder(tmp_path, per_class=1)
    _damage(tmp_path / "train" / "dog" / "0.png", "garbage")
    with pytest.raises(ValueError, match="without readable images .* dog"):
        ImageFolder(tmp_path / "train", 8, skip_unreadable=True)


def _build_counter(calls: list[int]):
    def build() -> dict[str, torch.Tensor]:
        calls.append(1)
        return dict(x=torch.arange(1000, dtype=torch.float32), y=torch.ones(3, dtype=torch.long))

    return build


@pytest.mark.parametrize("damage", ["truncated", "flipped bits", "no checksum"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_notice(damage, tmp_path, capsys):
    calls: list[int] = []
    first = cached("toy", dict(n=1), _build_counter(calls), root=tmp_path)
    path = cache_path("toy", dict(n=1), tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flipped bits":
        entry = torch.load(path)
        entry["tensors"]["x"][500] = float("nan")  # what a flipped exponent bit can make of a pixel
        torch.save(entry, path)
    else:
        torch.save(first, path)  # an entry from before checksums
    again = cached("toy", dict(n=1), _build_counter(calls), root=tmp_path)
    assert len(calls) == 2 and all(torch.equal(again[key], first[key]) for key in first)
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and f"the cached toy data set {path} is damaged" in notice, notice
    assert cached("toy", dict(n=1), _build_counter(calls), root=tmp_path)["x"].equal(first["x"]) and len(calls) == 2
    assert capsys.readouterr().err == ""


def test_a_dead_writers_temporary_file_is_removed(tmp_path):
    path = cache_path("toy", dict(n=1), tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{path.name}.{int(dead.stdout)}.abcd.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a file")
    cached("toy", dict(n=1), _build_counter([]), root=tmp_path)
    assert not stale.exists() and [p.name for p in tmp_path.iterdir()] == [path.name]
