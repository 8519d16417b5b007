"""The training loop: AdamW, warm-up then cosine schedule, label smoothing, AMP, checkpoint and resume, DDP.

One process per device under ``torchrun`` (the ``WORLD_SIZE``/``RANK`` environment; gloo on CPU, NCCL on CUDA),
or a single process. Each epoch's data order and random state derive from ``seed`` and the epoch alone, so a run
resumed from its checkpoint continues exactly as if it had not stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from elfatt_lab._arguments import one_line, writable_folder_error
from elfatt_lab._atomic import atomic_save_figure, atomic_write_text
from elfatt_lab._csv import write_rows
from elfatt_lab._memory import peak_rss_mib, reset_peak_rss
from elfatt_lab._progress import progress_bar
from elfatt_lab._run_folder import owned_run_folder
from elfatt_lab._safe_load import plain_config
from elfatt_lab.attention import MECHANISMS
from elfatt_lab.data.cache import cache_dir
from elfatt_lab.train.checkpoint import CheckpointError, check_resume, load_checkpoint, save_checkpoint
from elfatt_lab.train.model import build_model
from elfatt_lab.train.tasks import Task, build_task, check_task_name, image_side, is_generated

__all__ = [
    "TrainConfig",
    "build_optimizer",
    "check_config",
    "task_of",
    "TrainingStopped",
    "RunAborted",
    "NonFiniteLoss",
    "train",
]

# How long a process of a distributed run waits for the others in one collective before it gives up.
DDP_TIMEOUT = timedelta(minutes=5)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in its checkpoints."""

    task: str = "digits"
    model: str = "elfatt"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    amp: bool = False
    seed: int = 0
    device: str = "cpu"
    dim: int = 64
    depth: int = 2
    heads: int = 4
    patch: int = 1
    pool: str = "mean"
    train_samples: int = 4000
    val_samples: int = 1000
    # Train on this many images of the task's training split, drawn with the seed (0: all of it).
    train_subset: int = 0
    image_size: int = 224
    max_length: int = 500
    path_length: int = 14
    # ELFATT layers' blocks in the small transformer: tokens per block along a sequence, or the side of square
    # blocks of patches; 0 keeps the mechanism's own. Other mechanisms ignore it.
    block: int = 0
    # Samples per epoch: consecutive slices of seeded passes over the training split, so that an epoch (and its
    # checkpoint) comes every few minutes on a large set; 0: an epoch is the whole split.
    epoch_samples: int = 0
    workers: int = 0
    skip_unreadable_images: bool = False
    augment: bool = False
    data_dir: Path | None = None
    out: Path = Path("train-results/run")
    resume: Path | None = None
    overwrite: bool = False
    progress: bool = True
    # What the training recipe is beyond the options: 1 decayed every parameter, 2 (since) follows the model's
    # no_weight_decay() and leaves biases and norms alone. Checkpoints of another recipe do not resume.
    recipe: int = 2


# What a run leaves in its folder that another run must not overwrite unasked.
CHECKPOINTS = ("last.pt", "best.pt")

# Options that count something and need at least one of it.
POSITIVE_OPTIONS = ("epochs", "batch_size", "dim", "depth", "heads", "patch", "train_samples", "val_samples")
POSITIVE_OPTIONS += ("image_size", "max_length", "path_length")


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Distributed(device=torch.device(config.device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = config.device.startswith("cuda")
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=DDP_TIMEOUT)
    device = torch.device("cuda", local_rank) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    return _Distributed(rank, world, device)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW through timm's ``create_optimizer_v2``: weight decay on the weight matrices and kernels only, not on
    biases, norms or what the model's ``no_weight_decay()`` names (position embeddings, class tokens, ...)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)


class EpochSlices(Sampler[int]):
    """Epoch ``e`` trains on samples ``[e * n, (e + 1) * n)`` of the concatenated passes over ``size`` samples, each
    pass a permutation seeded by ``seed`` and its number; ``world`` ranks take every ``world``-th of them."""

    def __init__(self, size: int, samples: int, world: int = 1, rank: int = 0, *, seed: int = 0) -> None:
        if samples % world:
            raise ValueError(f"epoch_samples {samples} must divide among the {world} processes")
        self.size, self.samples, self.world, self.rank, self.seed = size, samples, world, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        start, stop = self.epoch * self.samples, (self.epoch + 1) * self.samples
        passes = range(start // self.size, (stop - 1) // self.size + 1)
        order = torch.cat(
            [torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + p)) for p in passes]
        )
        first = passes[0] * self.size
        return order[start - first : stop - first][self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return self.samples // self.world


def _schedule(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return factor


def _peak_memory_mib(device: torch.device) -> float:
    """CUDA: max allocated since the run started; CPU: the process's peak RSS since the run started (or since
    the process started where Linux's clear_refs is unavailable)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return peak_rss_mib()
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _reduce(values: list[float], setup: _Distributed) -> list[float]:
    if setup.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=setup.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _run_epoch(model, loader, setup, config, *, optimizer=None, scheduler=None, scaler=None, progress=None):
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy) over all ranks."""
    training = optimizer is not None
    model.train(training)
    amp_dtype = torch.float16 if setup.device.type == "cuda" else torch.bfloat16
    total_loss = correct = count = 0.0
    task_id = progress.add_task("train" if training else "eval", total=len(loader)) if progress else None
    for inputs, labels in loader:
        inputs, labels = inputs.to(setup.device), labels.to(setup.device)
        autocast = torch.autocast(setup.device.type, dtype=amp_dtype) if config.amp else contextlib.nullcontext()
        with torch.set_grad_enabled(training), autocast:
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing if training else 0.0)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"the {'training' if training else 'validation'} loss is {loss_value}")
        if training:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        total_loss += loss_value * len(labels)
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += len(labels)
        if progress:
            progress.update(task_id, advance=1, description=f"{'train' if training else 'eval'} loss {loss_value:.3f}")
    if progress:
        progress.remove_task(task_id)
    total_loss, correct, count = _reduce([total_loss, correct, count], setup)
    return total_loss / max(count, 1), correct / max(count, 1)


def task_of(config: TrainConfig) -> Task:
    """The task a run of ``config`` trains on (its data, split and augmentation)."""
    return build_task(
        config.task,
        seed=config.seed,
        train_samples=config.train_samples,
        val_samples=config.val_samples,
        train_subset=config.train_subset,
        image_size=config.image_size,
        max_length=config.max_length,
        path_length=config.path_length,
        skip_unreadable_images=config.skip_unreadable_images,
        augment=config.augment,
        data_dir=config.data_dir,
        progress=config.progress,
    )


def model_of(config: TrainConfig, task: Task) -> nn.Module:
    """The model a run of ``config`` trains on ``task``: a backbone, or the small transformer it shapes."""
    shape = dict(dim=config.dim, depth=config.depth, heads=config.heads, patch=config.patch, pool=config.pool)
    return build_model(config.model, task, block=config.block, **shape)


def check_config(config: TrainConfig) -> None:
    """Check ``config`` before any data is made: every count in range, and what the options mean together.

    Raises:
        ValueError: a count or rate out of range, an unknown task or model, heads that do not split ``dim``, a patch
            that does not divide the images, or an output folder or data cache that cannot be written.
    """
    for name in POSITIVE_OPTIONS:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and config.lr > 0) or not 0 <= config.label_smoothing < 1:
        raise ValueError(f"lr must be > 0 and label_smoothing in [0, 1), got {config.lr}, {config.label_smoothing}")
    counts = (config.workers, config.train_subset, config.block, config.epoch_samples)
    if config.weight_decay < 0 or config.warmup_epochs < 0 or min(counts) < 0:
        raise ValueError("weight_decay, warmup_epochs, workers, train_subset, block and epoch_samples must be >= 0")
    problem = writable_folder_error(config.out)
    if problem:
        raise ValueError(f"--out: {problem}")
    check_task_name(config.task)
    if config.model not in MECHANISMS:
        from elfatt.models import is_model

        if not is_model(config.model):
            raise ValueError(
                f"unknown model {config.model!r}: an attention mechanism ({', '.join(MECHANISMS)}) or a backbone"
            )
    else:
        if config.dim % config.heads:
            raise ValueError(f"--dim {config.dim} does not split into --heads {config.heads}")
        side = image_side(config.task, config.image_size)
        if side is not None and side % config.patch:
            raise ValueError(f"--patch {config.patch} does not divide the task's {side}x{side} images")
    if config.task == "fashion-mnist":
        from elfatt_lab.data.fashion_mnist import fashion_mnist_dir

        fashion_mnist_dir(config.data_dir)
    if is_generated(config.task):
        problem = writable_folder_error(cache_dir())
        if problem:
            raise ValueError(f"the data cache ($ELFATT_DATA_DIR or ~/.cache/elfatt_lab/data): {problem}")


class TrainingStopped(RuntimeError):
    """A run that cannot go on; the message is one line and says what to do."""


class RunAborted(TrainingStopped):
    """A process of a distributed run stopped, so this one cannot go on."""


class NonFiniteLoss(TrainingStopped):
    """The loss became NaN or infinite: training stops before the step that would spread it into the weights."""


def train(config: TrainConfig) -> list[dict]:
    """Train and evaluate per ``config``; returns the per-epoch log (also in ``out/log.csv``, ``out/curves.png``).

    Raises:
        CheckpointError: ``config.resume`` cannot be read or does not fit ``config``.
        RunAborted: another process of a distributed run stopped (or did not answer within :data:`DDP_TIMEOUT`).
        NonFiniteLoss: the loss became NaN or infinite; the checkpoints of the epochs before are left as they were.
    """
    check_config(config)
    setup = _setup(config)
    try:
        return _train(config, setup)
    except RuntimeError as error:
        if setup.world == 1 or isinstance(error, TrainingStopped):
            raise
        reason = one_line(error)
        # gloo's messages start with their source location and end with advice about remote workers.
        reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0]
        raise RunAborted(
            f"rank {setup.rank} of {setup.world}: another process of the run stopped ({reason}); "
            f"resume from {config.out / 'last.pt'} with --resume"
        ) from None
    finally:
        if setup.world > 1:
            dist.destroy_process_group()


def _train(config: TrainConfig, setup: _Distributed) -> list[dict]:
    _reset_peak_memory(setup.device)
    # A checkpoint that cannot be read or does not fit is refused before any data or folder is made.
    state = None if config.resume is None else load_checkpoint(config.resume, setup.device)
    start_epoch = 0 if state is None else check_resume(state, config, config.resume)
    resuming, overwrite = config.resume is not None, config.overwrite
    folder = owned_run_folder(config.out, CHECKPOINTS, resume=resuming, overwrite=overwrite) if setup.main else None
    with folder or contextlib.nullcontext():
        return _train_in_folder(config, setup, state, start_epoch)


def _train_in_folder(config: TrainConfig, setup: _Distributed, state: dict | None, start_epoch: int) -> list[dict]:
    torch.manual_seed(config.seed)
    task = task_of(config)
    model = model_of(config, task).to(setup.device)
    if config.epoch_samples:
        sampler = EpochSlices(len(task.train), config.epoch_samples, setup.world, setup.rank, seed=config.seed)
    else:
        sampler = DistributedSampler(task.train, setup.world, setup.rank, shuffle=True, seed=config.seed)
    train_loader = DataLoader(task.train, config.batch_size, sampler=sampler, num_workers=config.workers)
    val_shard = Subset(task.val, range(setup.rank, len(task.val), setup.world))
    val_loader = DataLoader(val_shard, config.batch_size, num_workers=config.workers)
    ddp_model = nn.parallel.DistributedDataParallel(model) if setup.world > 1 else model
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, len(train_loader)))
    scaler = torch.amp.GradScaler(setup.device.type, enabled=config.amp and setup.device.type == "cuda")
    history: list[dict] = []
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{config.resume} does not fit this run's model ({one_line(error)})") from None
        history = state["history"]
    config.out.mkdir(parents=True, exist_ok=True)
    best = max((row["val_acc"] for row in history), default=-1.0)
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        # Python's own generator too: timm's augmentations draw from it.
        random.seed(config.seed + 1000 * epoch + setup.rank)
        torch.manual_seed(config.seed + 1000 * epoch + setup.rank)
        start = time.perf_counter()
        with _progress(config, setup) as progress, _stop_on_non_finite_loss(config, epoch):
            train_loss, train_acc = _run_epoch(
                ddp_model,
                train_loader,
                setup,
                config,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                progress=progress,
            )
            epoch_seconds = time.perf_counter() - start
            val_loss, val_acc = _run_epoch(ddp_model, val_loader, setup, config, progress=progress)
        row = dict(
            epoch=epoch + 1,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=scheduler.get_last_lr()[0],
            epoch_seconds=epoch_seconds,
            train_images_per_s=len(sampler) * setup.world / epoch_seconds,
            peak_mib=_peak_memory_mib(setup.device),
        )
        history.append(row)
        if setup.main:
            print(
                f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"val loss {val_loss:.4f} acc {val_acc:.4f} | {epoch_seconds:.1f}s",
                flush=True,
            )
            state = dict(
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                epoch=epoch,
                history=history,
                config=plain_config(asdict(config)),
            )
            # best.pt first: a kill between the two saves leaves best.pt ahead of last.pt, never behind it, and the
            # resumed run retrains that epoch and writes both again
            if val_acc > best:
                save_checkpoint(state, config.out / "best.pt")
            save_checkpoint(state, config.out / "last.pt")
            _write_log(history, config.out)
        best = max(best, val_acc)
        if setup.world > 1:
            # The other ranks wait until rank 0's checkpoint and log are complete.
            dist.barrier()
    if task.test is not None:
        _evaluate_on_test(model, ddp_model, task.test, setup, config)
    return history


def _evaluate_on_test(model: nn.Module, ddp_model: nn.Module, test: Dataset, setup: _Distributed, config: TrainConfig):
    """The held-out test split, seen once at the end: the final model and the one chosen by validation accuracy
    (``best.pt``), written to ``out/test.json`` with the inference throughput of each pass (images/s, eval mode,
    no gradients, the run's batch size)."""
    shard = Subset(test, range(setup.rank, len(test), setup.world))
    loader = DataLoader(shard, config.batch_size, num_workers=config.workers)
    results = {}
    for which, path in (("final", None), ("best_val", config.out / "best.pt")):
        if path is not None:
            state = load_checkpoint(path, setup.device)
            model.load_state_dict(state["model"])
            results[which] = dict(epoch=int(state["epoch"]) + 1)
        else:
            results[which] = dict(epoch=config.epochs)
        start = time.perf_counter()
        loss, accuracy = _run_epoch(ddp_model, loader, setup, config)
        seconds = time.perf_counter() - start
        results[which].update(
            test_loss=loss, test_acc=accuracy, test_images=len(test), images_per_s=len(shard) * setup.world / seconds
        )
    if setup.main:
        atomic_write_text(json.dumps(results, indent=2) + "\n", config.out / "test.json")
        final, chosen = results["final"], results["best_val"]
        print(
            f"test ({len(test)} examples): final model acc {final['test_acc']:.4f}, best-val model (epoch "
            f"{chosen['epoch']}) acc {chosen['test_acc']:.4f}",
            flush=True,
        )


@contextlib.contextmanager
def _stop_on_non_finite_loss(config: TrainConfig, epoch: int):
    """Name the epoch and the checkpoint left as it was in a :class:`NonFiniteLoss`."""
    try:
        yield
    except NonFiniteLoss as error:
        kept = config.out / "last.pt"
        where = f"{kept} (epoch {epoch}) is left as it was" if epoch and kept.is_file() else "no checkpoint was written"
        raise NonFiniteLoss(
            f"epoch {epoch + 1}: {error}; training stopped before it reached the weights and {where}: "
            "lower --lr, raise --warmup-epochs, or try without --amp"
        ) from None


def _progress(config: TrainConfig, setup: _Distributed):
    return progress_bar(config.progress and setup.main, transient=True)


def _write_log(history: list[dict], out: Path) -> None:
    write_rows(history, out / "log.csv")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        acc_ax.plot(epochs, [row[f"{split}_acc"] for row in history], marker="o", label=split)
    for ax, what in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.suptitle(out.name)
    figure.tight_layout()
    atomic_save_figure(figure, out / "curves.png", dpi=100)
    plt.close(figure)
