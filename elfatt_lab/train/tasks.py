"""Classification tasks for ``elfatt train``: what the data is and how a model sees it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["Task", "TASKS", "build_task", "check_task_name", "image_side", "is_generated"]

TASKS = ("digits", "fashion-mnist", "pathfinder32", "pathfinder64", "pathfinder128", "listops", "folder:<path>")


@dataclass
class Task:
    """A dataset pair and its input layout: images (``channels``, ``image_size``) or token ids (``vocab_size``,
    ``seq_len``, laid out as a ``(1, seq_len)`` grid)."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    kind: str
    channels: int = 0
    image_size: int = 0
    vocab_size: int = 0
    seq_len: int = 0
    # The token id of padding in a token task (left out of attention and pooling); None where nothing is padded.
    pad_id: int | None = None
    # Held out for the final reported numbers only (Fashion-MNIST's official test split); None where there is none.
    test: Dataset | None = None


def _cores() -> int:
    """The cores this process may run on: Pathfinder's images are drawn by as many processes."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pathfinder(
    size: int, train_samples: int, val_samples: int, seed: int, path_length: int, progress: bool
) -> tuple[TensorDataset, TensorDataset]:
    from elfatt_lab.data.cache import cached
    from elfatt_lab.data.pathfinder import GENERATOR_VERSION, generate_pathfinder, params_for

    drawing = params_for(size, path_length)

    def split(samples: int, split_seed: int) -> TensorDataset:
        key = dict(samples=samples, size=size, seed=split_seed, version=GENERATOR_VERSION)
        if path_length != 14:
            key["path_length"] = path_length
        data = cached(
            "pathfinder",
            key,
            lambda: dict(
                zip(
                    ("images", "labels"),
                    generate_pathfinder(
                        samples, size=size, seed=split_seed, params=drawing, progress=progress, workers=_cores()
                    ),
                    strict=True,
                )
            ),
        )
        return TensorDataset(data["images"], data["labels"])

    return split(train_samples, seed), split(val_samples, seed + 10_000)


def _listops(
    train_samples: int, val_samples: int, seed: int, max_length: int, progress: bool
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Training, validation and test splits (the last two of ``val_samples`` each), from their own seeds."""
    from elfatt_lab.data.cache import cached
    from elfatt_lab.data.listops import GENERATOR_VERSION, generate_listops

    def split(samples: int, split_seed: int) -> TensorDataset:
        params = dict(samples=samples, seed=split_seed, max_length=max_length, version=GENERATOR_VERSION)

        def build() -> dict:
            tokens, labels = generate_listops(
                samples, seed=split_seed, max_length=max_length, min_length=max(1, max_length // 4), progress=progress
            )
            return dict(tokens=tokens.to(torch.uint8), labels=labels)  # 16 token ids: an eighth of int64's bytes

        data = cached("listops", params, build)
        return TensorDataset(data["tokens"].long(), data["labels"])

    return split(train_samples, seed), split(val_samples, seed + 10_000), split(val_samples, seed + 20_000)


def check_task_name(name: str) -> None:
    """Raise ValueError unless ``name`` is one of :data:`TASKS` (a ``folder:`` task names an existing folder)."""
    if name in TASKS[:-1]:
        return
    if name.startswith("folder:"):
        root = Path(name.removeprefix("folder:"))
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise ValueError(f"task {name}: {root / split} does not exist (expected <path>/train and <path>/val)")
        return
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")


def is_generated(name: str) -> bool:
    """Whether the task's data is generated here and cached (Pathfinder, ListOps)."""
    return name.startswith("pathfinder") or name == "listops"


def image_side(name: str, image_size: int) -> int | None:
    """The side of a task's images before patching (None for token tasks), known before any data is made."""
    if name == "digits":
        return 8
    if name == "fashion-mnist":
        return 28
    if name.startswith("pathfinder"):
        return int(name.removeprefix("pathfinder"))
    return image_size if name.startswith("folder:") else None


def build_task(
    name: str,
    *,
    seed: int = 0,
    train_samples: int = 4000,
    val_samples: int = 1000,
    train_subset: int = 0,
    image_size: int = 224,
    max_length: int = 500,
    path_length: int = 14,
    skip_unreadable_images: bool = False,
    augment: bool = False,
    data_dir: Path | None = None,
    progress: bool = False,
) -> Task:
    """Build a task by name (see :data:`TASKS`).

    Args:
        name: ``digits`` (scikit-learn's, shipped with it), ``fashion-mnist`` (the original idx files, see
            :mod:`elfatt_lab.data.fashion_mnist`; validation drawn from the training images with ``seed``),
            ``pathfinder{32,64,128}`` and ``listops`` (Long Range Arena, generated locally with fixed seeds and
            cached), or ``folder:<path>`` with ``<path>/train`` and ``<path>/val`` in ImageFolder layout.
        seed: seed of the split or the generators.
        train_samples, val_samples: sizes of the generated tasks; ``val_samples`` is also the number of
            Fashion-MNIST training images held out for validation.
        train_subset: keep this many training images, drawn with ``seed`` (0 keeps all); the validation and test
            splits are unchanged.
        image_size: side of the folder task's images, normalised with ImageNet's mean and std.
        max_length: ListOps sequence length (padded); expressions are longer than a quarter of it (LRA's 2,000 and
            500). ListOps has a test split of ``val_samples`` too.
        path_length: dashes per Pathfinder target path: LRA's 14, or Linsley et al.'s easier 6 and 9.
        skip_unreadable_images: a folder task leaves out the images Pillow cannot read (after decoding every image
            once), instead of stopping at the first one.
        augment: augment the training images: a folder task with timm's random-resized crop, flip and colour
            jitter, Fashion-MNIST with a random crop after 2-pixel padding and a flip.
        data_dir: Fashion-MNIST's idx files, when not in Debian's folder or ``$ELFATT_FASHION_MNIST_DIR``.
        progress: a progress bar while Pathfinder or ListOps data is generated (not when it is read from the cache).
    """
    task = _whole_task(
        name,
        seed=seed,
        train_samples=train_samples,
        val_samples=val_samples,
        image_size=image_size,
        max_length=max_length,
        path_length=path_length,
        skip_unreadable_images=skip_unreadable_images,
        augment=augment,
        data_dir=data_dir,
        progress=progress,
    )
    if train_subset:
        if train_subset > len(task.train):
            raise ValueError(f"train_subset {train_subset} exceeds the {len(task.train)} training images of {name}")
        draw = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:train_subset]
        task.train = Subset(task.train, draw.tolist())
    return task


def _whole_task(
    name: str,
    *,
    seed: int,
    train_samples: int,
    val_samples: int,
    image_size: int,
    max_length: int,
    path_length: int,
    skip_unreadable_images: bool,
    augment: bool,
    data_dir: Path | None,
    progress: bool,
) -> Task:
    if name == "digits":
        from elfatt_lab.data.images import digits

        return Task(name, digits("train", seed=seed), digits("val", seed=seed), 10, "image", channels=1, image_size=8)
    if name == "fashion-mnist":
        from elfatt_lab.data.fashion_mnist import RandomCropFlip, fashion_mnist

        options = dict(val_size=val_samples, seed=seed, data_dir=data_dir)
        train, val, test = (fashion_mnist(split, **options) for split in ("train", "val", "test"))
        train = RandomCropFlip(train) if augment else train
        return Task(name, train, val, 10, "image", channels=1, image_size=28, test=test)
    if name.startswith("pathfinder") and name.removeprefix("pathfinder") in ("32", "64", "128"):
        size = int(name.removeprefix("pathfinder"))
        train, val = _pathfinder(size, train_samples, val_samples, seed, path_length, progress)
        return Task(name, train, val, 2, "image", channels=1, image_size=size)
    if name == "listops":
        from elfatt_lab.data.listops import PAD_ID, VOCAB_SIZE

        train, val, test = _listops(train_samples, val_samples, seed, max_length, progress)
        shape = dict(vocab_size=VOCAB_SIZE, seq_len=max_length, pad_id=PAD_ID)
        return Task(name, train, val, 10, "tokens", test=test, **shape)
    if name.startswith("folder:"):
        from elfatt_lab.data.images import ImageFolder

        root = Path(name.removeprefix("folder:"))
        from timm.data import create_transform

        # timm's ImageNet pipelines: the mean and std normalisation always; random-resized crop, flip and colour
        # jitter on the training split with ``augment``; resize and centre crop otherwise.
        train, val = (
            ImageFolder(
                root / split,
                image_size,
                transform=create_transform(image_size, is_training=augment and split == "train"),
                skip_unreadable=skip_unreadable_images,
            )
            for split in ("train", "val")
        )
        if train.classes != val.classes:
            raise ValueError(f"{root}/train and {root}/val have different classes")
        return Task(name, train, val, len(train.classes), "image", channels=3, image_size=image_size)
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
