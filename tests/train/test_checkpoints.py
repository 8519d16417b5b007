"""Faults during training: interrupted saves, killed writers, unreadable or foreign checkpoints, racing cache
builders, a dying DDP rank. Each leaves a loadable last checkpoint and an exact resume, or a one-line error."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import elfatt_lab.train.checkpoint as checkpoint_module
import elfatt_lab.train.loop as loop
from elfatt_lab.train import TrainConfig, train
from elfatt_lab.train.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from elfatt_lab.train.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = dict(task="digits", model="elfatt", batch_size=64, dim=16, depth=1, heads=2, progress=False)
CLI_TINY = ["--task", "digits", "--model", "elfatt", "--batch-size", "64", "--dim", "16", "--depth", "1"]
CLI_TINY += ["--heads", "2", "--no-progress"]


def _partial_save(obj: object, file) -> None:
    """torch.save that writes the start of a checkpoint, then fails as a full disk does."""
    file.write(b"PK\x03\x04" + b"\x00" * 512)
    raise OSError(28, "No space left on device")


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished one-epoch run: its folder holds last.pt and best.pt."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(epochs=1, out=out, **TINY))
    return out


@pytest.mark.parametrize("fault", ["torch.save", "fsync", "rename"])
def test_an_interrupted_save_keeps_the_previous_checkpoint(fault, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"weights": torch.zeros(4)}, path)
    if fault == "torch.save":
        monkeypatch.setattr(checkpoint_module.torch, "save", _partial_save)
    elif fault == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    else:
        monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        save_checkpoint({"weights": torch.ones(4)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["weights"], torch.zeros(4))
    assert _temporaries(tmp_path) == []


def test_resume_after_a_failed_save_is_exact(tmp_path, monkeypatch):
    straight = train(TrainConfig(epochs=2, out=tmp_path / "straight", **TINY))
    real_save, calls = save_checkpoint, []

    def save_failing_in_epoch_2(state, path):
        calls.append(path.name)
        if state["epoch"] == 1:
            monkeypatch.setattr(checkpoint_module.torch, "save", _partial_save)
        real_save(state, path)

    monkeypatch.setattr(loop, "save_checkpoint", save_failing_in_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        train(TrainConfig(epochs=2, out=tmp_path / "crashed", **TINY))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 0
    assert _temporaries(tmp_path / "crashed") == []
    resumed = train(TrainConfig(epochs=2, out=tmp_path / "resumed", resume=tmp_path / "crashed" / "last.pt", **TINY))
    assert [row["train_loss"] for row in resumed] == [row["train_loss"] for row in straight]
    assert [row["val_acc"] for row in resumed] == [row["val_acc"] for row in straight]
    final = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    reference = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    assert all(torch.equal(final[key], reference[key]) for key in reference)


SLOW_WRITER = """
import sys, time, torch
from pathlib import Path
import elfatt_lab.train.checkpoint as checkpoint
path = Path(sys.argv[1])
checkpoint.save_checkpoint({"weights": torch.zeros(4)}, path)

def slow_save(obj, file):
    file.write(b"PK" + b"\\x00" * 4096)
    file.flush()
    print("writing", flush=True)
    time.sleep(120)

checkpoint.torch.save = slow_save
checkpoint.save_checkpoint({"weights": torch.ones(4)}, path)
"""


def test_a_writer_killed_during_a_save_leaves_the_last_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert torch.equal(torch.load(path)["weights"], torch.zeros(4))
    (stale,) = _temporaries(tmp_path)
    assert remove_stale_temporaries(path) == [stale] and _temporaries(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "not a checkpoint"])
def test_an_unreadable_checkpoint_is_one_line_naming_a_good_one(damage, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = run / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "foreign":
        last.write_bytes(os.urandom(2048))
    else:
        torch.save({"model": {}}, last)
    status = main([*CLI_TINY, "--epochs", "2", "--out", str(tmp_path / "next"), "--resume", str(last)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1, error
    assert str(last) in error and f"other checkpoints in its folder: {run / 'best.pt'}; resume from one" in error
    assert not (tmp_path / "next").exists()


class _Payload:
    """Pickles to a call of ``exec``: loading it with ``weights_only=False`` would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickled_code_in_a_checkpoint_never_runs(trained_run, tmp_path, capsys):
    """--resume of a file holding pickled code, and a folder whose other checkpoint holds it too: neither runs, the
    answer is one line, and the neighbour is named, never opened."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil" / "last.pt"
    evil.parent.mkdir()
    torch.save({key: _Payload(marker) for key in ("model", "optimizer", "epoch", "config")}, evil)
    torch.save({"model": _Payload(marker)}, evil.parent / "best.pt")
    status = main([*CLI_TINY, "--epochs", "2", "--out", str(tmp_path / "next"), "--resume", str(evil)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1, error
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert str(evil) in error and str(evil.parent / "best.pt") in error
    (evil.parent / "good.pt").write_bytes((trained_run / "last.pt").read_bytes())
    evil.write_bytes(b"")
    assert main([*CLI_TINY, "--epochs", "2", "--out", str(tmp_path / "next"), "--resume", str(evil)]) == 2
    assert not marker.exists(), "a neighbouring checkpoint was unpickled"


def test_a_checkpoint_written_before_plain_configs_still_resumes(trained_run, tmp_path):
    """Checkpoints saved with pathlib paths in their config (before configs were stored as plain values) load with
    weights_only=True: paths are the one type allowed beyond tensors, numbers, strings and containers."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"] = {key: Path(value) if key in ("out", "data_dir") and value else value
                       for key, value in state["config"].items()}  # fmt: skip
    torch.save(state, run / "last.pt")
    assert main([*CLI_TINY, "--epochs", "2", "--out", str(run), "--resume", str(run / "last.pt")]) == 0


def test_an_unreadable_checkpoint_without_a_good_one_says_start_afresh(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"")
    status = main([*CLI_TINY, "--epochs", "2", "--out", str(tmp_path), "--resume", str(tmp_path / "last.pt")])
    error = capsys.readouterr().err
    assert status == 2 and "start afresh" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "2", "--dim", "32"], "saved by a run with dim=16, but this command has dim=32"),
        (["--epochs", "2", "--model", "sdpa", "--lr", "0.01"], "elfatt, lr=0.001, but this command has model=sdpa"),
        (["--epochs", "1"], "has trained 1 epochs already, --epochs is 1"),
    ],
)  # fmt: skip
def test_resume_refuses_another_run_in_one_line(options, message, trained_run, tmp_path, capsys):
    argv = [*CLI_TINY, *options, "--out", str(tmp_path), "--resume", str(trained_run / "last.pt")]
    status = main(argv)
    error = capsys.readouterr().err
    assert status == 2 and message in error and error.count("\n") == 1, error


CACHE_BUILDER = """
import sys, time, torch
from elfatt_lab.data.cache import cached

def build():
    time.sleep(1.0)
    return {"x": torch.arange(100_000, dtype=torch.float32)}

data = cached("race", {"n": 100_000}, build, root=sys.argv[1])
assert torch.equal(data["x"], torch.arange(100_000, dtype=torch.float32))
"""


def test_two_processes_building_one_cache_end_with_one_whole_file(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    builders = [subprocess.Popen([sys.executable, "-c", CACHE_BUILDER, str(tmp_path)], env=env) for _ in range(2)]
    assert [builder.wait(timeout=120) for builder in builders] == [0, 0]
    (cache_file,) = tmp_path.iterdir()
    assert cache_file.name.startswith("race-")
    assert torch.equal(torch.load(cache_file)["tensors"]["x"], torch.arange(100_000, dtype=torch.float32))


DYING_RANK = """
import os, sys
import elfatt_lab.train.loop as loop
from elfatt_lab.train.cli import main

if os.environ["RANK"] == "1" and os.environ.get("DIE_IN_EPOCH"):
    original, passes = loop._run_epoch, []

    def dying(*args, **kwargs):
        passes.append(1)
        if len(passes) == 2 * int(os.environ["DIE_IN_EPOCH"]) - 1:  # its training pass (train, then eval, per epoch)
            os._exit(17)
        return original(*args, **kwargs)

    loop._run_epoch = dying
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(argv: list[str], script: Path, die_in_epoch: str) -> list[subprocess.CompletedProcess]:
    port, processes = _free_port(), []
    for rank in (0, 1):
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
        env.update(MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
        env.update(DIE_IN_EPOCH=die_in_epoch)
        command = [sys.executable, str(script), *argv]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def test_a_dying_ddp_rank_stops_the_run_in_one_line_and_it_resumes(tmp_path):
    script = tmp_path / "dying_rank.py"
    script.write_text(textwrap.dedent(DYING_RANK))
    out = tmp_path / "ddp"
    argv = [*CLI_TINY, "--batch-size", "32", "--epochs", "2", "--out", str(out)]
    survivor, dead = _two_ranks(argv, script, die_in_epoch="2")
    assert dead.returncode == 17
    assert survivor.returncode == 1, survivor.stderr[-2000:]
    last_line = survivor.stderr.strip().splitlines()[-1]
    assert last_line.startswith("elfatt train: error: rank 0 of 2: another process of the run stopped (")
    assert last_line.endswith(f"resume from {out / 'last.pt'} with --resume")
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    resumed = _two_ranks([*argv, "--resume", str(out / "last.pt")], script, die_in_epoch="")
    assert [result.returncode for result in resumed] == [0, 0], resumed[0].stderr[-2000:]
    assert "epoch 2/2" in resumed[0].stdout and "epoch 1/2" not in resumed[0].stdout
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(trained_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "last.pt").read_bytes()
    real_cross_entropy = loop.F.cross_entropy
    monkeypatch.setattr(loop.F, "cross_entropy", lambda *args, **kw: real_cross_entropy(*args, **kw) * float("nan"))
    argv = [*CLI_TINY, "--epochs", "2", "--out", str(run), "--resume", str(run / "last.pt")]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "epoch 2: the training loss is nan; training stopped before it reached the weights" in error
    assert f"{run / 'last.pt'} (epoch 1) is left as it was" in error
    assert (run / "last.pt").read_bytes() == before


class _Killed(BaseException):
    """A kill between two saves, as the process sees it: nothing after it runs."""


def test_best_never_lags_last_after_a_kill_between_their_saves(tmp_path, monkeypatch):
    """The run is killed at the save after epoch 2's first one: best.pt still holds the best model of the history
    that last.pt records, and the resumed run ends with best.pt at the epoch of its best validation accuracy."""
    out = tmp_path / "run"
    real_save = loop.save_checkpoint
    saved_in_epoch_2 = []

    def killed(state, path):
        if saved_in_epoch_2:
            raise _Killed
        if int(state["epoch"]) == 1:
            saved_in_epoch_2.append(path.name)
        real_save(state, path)

    monkeypatch.setattr(loop, "save_checkpoint", killed)
    with pytest.raises(_Killed):
        train(TrainConfig(epochs=3, out=out, **TINY))
    best, last = (torch.load(out / name, weights_only=True) for name in ("best.pt", "last.pt"))
    recorded = [row["val_acc"] for row in last["history"]]
    assert int(best["epoch"]) >= recorded.index(max(recorded)), (saved_in_epoch_2, recorded)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    history = train(TrainConfig(epochs=3, out=out, resume=out / "last.pt", **TINY))
    accuracies = [row["val_acc"] for row in history]
    assert int(torch.load(out / "best.pt", weights_only=True)["epoch"]) == accuracies.index(max(accuracies))


def test_a_checkpoint_of_another_shape_is_one_line(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(7, 3)
    torch.save(state, run / "last.pt")
    status = main([*CLI_TINY, "--epochs", "2", "--out", str(run), "--resume", str(run / "last.pt")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "does not fit this run's model" in error, error
