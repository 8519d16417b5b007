"""A run's folder is owned: a lock naming the writing process, a stale one taken over, and no other run's
checkpoints replaced unless --resume or --overwrite says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from elfatt_lab._run_folder import LOCK_NAME, RunFolderError, owned_run_folder
from elfatt_lab.train.cli import main

CLI_TINY = ["--task", "digits", "--model", "elfatt", "--batch-size", "64", "--dim", "16", "--depth", "1"]


def test_the_lock_names_its_process_and_goes_with_the_run(tmp_path):
    with owned_run_folder(tmp_path / "run", ["last.pt"], resume=False, overwrite=False):
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_folder_in_use_is_refused_naming_the_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.joinpath(LOCK_NAME).write_text(f"{holder.pid}\n")
        with pytest.raises(RunFolderError, match=f"in use by another run \\(pid {holder.pid}") as refusal:
            with owned_run_folder(tmp_path, ["last.pt"], resume=True, overwrite=True):
                pass
        assert "\n" not in str(refusal.value)
        assert tmp_path.joinpath(LOCK_NAME).read_text().strip() == str(holder.pid), "the holder's lock was removed"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.joinpath(LOCK_NAME).write_text(f"{dead.pid}\n")
    with owned_run_folder(tmp_path, ["last.pt"], resume=False, overwrite=False):
        assert tmp_path.joinpath(LOCK_NAME).read_text().strip() == str(os.getpid())


@pytest.mark.parametrize(
    "resume, overwrite, allowed", [(False, False, False), (True, False, True), (False, True, True)]
)
def test_another_runs_checkpoints_need_resume_or_overwrite(resume, overwrite, allowed, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"a finished run")
    if allowed:
        with owned_run_folder(tmp_path, ["last.pt", "best.pt"], resume=resume, overwrite=overwrite):
            pass
        return
    with pytest.raises(RunFolderError, match="holds another run's best.pt: pass --resume to continue it, --overwrite"):
        with owned_run_folder(tmp_path, ["last.pt", "best.pt"], resume=resume, overwrite=overwrite):
            pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_new_train_run_into_a_finished_one_is_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path), "--epochs", "1"]
    assert main([*CLI_TINY, *out, "--no-progress"]) == 0
    finished = (tmp_path / "last.pt").read_bytes()
    capsys.readouterr()
    assert main([*CLI_TINY, *out, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--overwrite" in error, error
    assert (tmp_path / "last.pt").read_bytes() == finished
    assert main([*CLI_TINY, *out, "--no-progress", "--overwrite"]) == 0
