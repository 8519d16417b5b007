"""Files the commands write: atomically, and a write that fails (a full disk, a folder that refuses files) ends in
one line naming the file, with what was already saved whole; the data cache failing to write is only a warning."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import elfatt_lab._atomic as atomic
from elfatt_lab._atomic import atomic_save, atomic_write_text
from elfatt_lab._csv import write_rows
from elfatt_lab.data.cache import cached

CLI_TINY = ["--task", "digits", "--model", "elfatt", "--batch-size", "64", "--dim", "16", "--depth", "1"]


def _full_disk(monkeypatch):
    def no_space(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    write_rows([dict(epoch=1)], path)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left on device") as failure:
        write_rows([dict(epoch=1), dict(epoch=2)], path)
    assert str(path) in str(failure.value) and "\n" not in str(failure.value)
    assert path.read_text().splitlines() == ["epoch", "1"]
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"], "a temporary file was left behind"


def test_a_folder_that_refuses_files_is_named(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    with pytest.raises(OSError, match="Permission denied") as failure:
        atomic_write_text("x", tmp_path / "summary.md")
    assert str(tmp_path / "summary.md") in str(failure.value)


def test_a_torch_save_that_fails_mid_write_is_named(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"weights": torch.zeros(3)}, path)

    def broken(obj, file):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(atomic.torch, "save", broken)
    with pytest.raises(OSError, match="writing failed .*unexpected pos") as failure:
        atomic_save({"weights": torch.ones(3)}, path)
    assert str(path) in str(failure.value)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.zeros(3))


def test_train_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from elfatt_lab.train.cli import main

    _full_disk(monkeypatch)
    assert main([*CLI_TINY, "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "No space left on device" in error and str(tmp_path / "run") in error, error


def test_a_cache_that_cannot_be_written_warns_and_the_data_is_used(tmp_path, monkeypatch, capsys):
    _full_disk(monkeypatch)
    data = cached("squares", dict(n=3), lambda: dict(x=torch.arange(3) ** 2), root=tmp_path)
    assert torch.equal(data["x"], torch.tensor([0, 1, 4]))
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "could not cache the squares data set" in warning
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == [], "a temporary file was left behind"
