"""Fashion-MNIST from its original idx files: 60,000 training and 10,000 test 28x28 grey images of 10 classes.

Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms",
arXiv 1708.07747 (MIT licence). Nothing is downloaded: Debian's ``dataset-fashion-mnist`` package installs the files
under :data:`DEBIAN_DIR`; another folder is given as ``data_dir`` or ``$ELFATT_FASHION_MNIST_DIR``.

The official split is kept: the test images serve only for the final reported numbers; model choice and early
stopping use a validation split carved from the training images with a fixed seed. Images are normalised with the
mean and standard deviation of the training split (validation images excluded).
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "DEBIAN_DIR",
    "CLASSES",
    "FILES",
    "fashion_mnist",
    "fashion_mnist_dir",
    "fashion_mnist_pixels",
    "read_idx",
    "RandomCropFlip",
]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx magic numbers: 0x08 (unsigned bytes) and the number of dimensions.
_MAGIC = {3: 0x00000803, 1: 0x00000801}


def fashion_mnist_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder with the four idx files: ``data_dir``, else ``$ELFATT_FASHION_MNIST_DIR``, else Debian's.

    Raises:
        ValueError: in one line, when a file is missing, naming the folder and how to get the files.
    """
    folder = Path(data_dir or os.environ.get("ELFATT_FASHION_MNIST_DIR") or DEBIAN_DIR)
    missing = [name for names in FILES.values() for name in names if _find(folder, name) is None]
    if missing:
        raise ValueError(
            f"Fashion-MNIST is not in {folder} (missing {', '.join(missing)}[.gz]): install Debian's package "
            "(apt-get install dataset-fashion-mnist) or pass --data-dir / set ELFATT_FASHION_MNIST_DIR to a folder "
            "with the four idx files"
        )
    return folder


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, dims: int) -> Tensor:
    """The uint8 array of an idx file (gzipped or not) with ``dims`` dimensions.

    Raises:
        ValueError: the file is not an idx file of unsigned bytes with ``dims`` dimensions, or is cut short.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != _MAGIC[dims]:
        raise ValueError(f"{path} is not an idx file of {dims}-d unsigned bytes (magic {magic!r})")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    body = data[4 + 4 * dims :]
    if len(body) != torch.Size(shape).numel():
        raise ValueError(f"{path} holds {len(body)} bytes for a {'x'.join(map(str, shape))} array")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


@functools.lru_cache(maxsize=2)
def _split(name: str, folder: Path) -> tuple[Tensor, Tensor]:
    images_file, labels_file = FILES[name]
    images, labels = read_idx(_find(folder, images_file), 3), read_idx(_find(folder, labels_file), 1)
    top = int(labels.max()) if len(labels) else 0
    if len(images) != len(labels) or top >= len(CLASSES):
        raise ValueError(f"{folder}: {name} has {len(images)} images and {len(labels)} labels of 0..{top}")
    return images, labels.long()


def fashion_mnist_pixels(split: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """The raw images ``[n, 28, 28]`` (uint8) and labels ``[n]`` (int64) of ``"train"`` (all 60,000) or ``"test"``,
    for uses that normalise in their own way (the diffusion model's ``[-1, 1]``)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _split(split, fashion_mnist_dir(data_dir))


def fashion_mnist(
    split: str, *, val_size: int = 5000, seed: int = 0, data_dir: str | os.PathLike[str] | None = None
) -> TensorDataset:
    """One split of Fashion-MNIST as normalised images ``[n, 1, 28, 28]`` and labels ``[n]``.

    Args:
        split: ``"train"`` (the training images less the validation ones), ``"val"`` (``val_size`` training images
            drawn with ``seed``) or ``"test"`` (the 10,000 official test images).
        val_size: images held out of training for validation.
        seed: seed of the validation draw.
        data_dir: the idx files' folder (see :func:`fashion_mnist_dir`).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = fashion_mnist_dir(data_dir)
    images, labels = _split("train", folder)
    if not 0 < val_size < len(images):
        raise ValueError(f"val_size must be in 1..{len(images) - 1}, got {val_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train_index, val_index = order[val_size:], order[:val_size]
    pixels = images[train_index].float() / 255.0
    mean, std = pixels.mean(), pixels.std()
    if split == "test":
        images, labels = _split("test", folder)
    else:
        index = train_index if split == "train" else val_index
        images, labels = images[index], labels[index]
    normalised = ((images.float() / 255.0 - mean) / std).unsqueeze(1)
    return TensorDataset(normalised, labels)


class RandomCropFlip(Dataset):
    """Light augmentation of an image dataset: a random crop after zero padding by ``padding`` pixels (of the
    normalised images, so the padding is the mean), and a horizontal flip with probability one half.

    Draws come from torch's generator, which the training loop seeds per epoch, so augmented runs resume exactly.
    """

    def __init__(self, dataset: Dataset, padding: int = 2) -> None:
        self.dataset = dataset
        self.padding = padding

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index]
        height, width = image.shape[-2:]
        padded = torch.nn.functional.pad(image, (self.padding,) * 4)
        top, left = (int(torch.randint(2 * self.padding + 1, ())) for _ in range(2))
        image = padded[..., top : top + height, left : left + width]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, label
