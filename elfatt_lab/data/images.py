"""Image classification data that needs no download: scikit-learn's digits, and an ImageNet-style folder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from elfatt_lab._arguments import one_line

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["digits", "ImageFolder", "UnreadableImage"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def digits(split: str, *, val_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """scikit-learn's handwritten digits (1797 images of 8x8, 10 classes), shipped inside the package.

    Args:
        split: ``"train"`` or ``"val"``; a fixed, seeded, stratification-free shuffle splits the 1797 images.
        val_fraction: share of the images in ``"val"``.
        seed: seed of the split.

    Returns:
        images ``[n, 1, 8, 8]`` in ``[0, 1]`` and labels ``[n]``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits task needs scikit-learn: pip install 'elfatt[train]'") from None

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_val = round(len(labels) * val_fraction)
    chosen = order[:num_val] if split == "val" else order[num_val:]
    return TensorDataset(images[chosen], labels[chosen])


class UnreadableImage(ValueError):
    """An image file that Pillow cannot read; the message is one line naming the file."""


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path``, decoded, as an RGB PIL image; :class:`UnreadableImage` if Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"cannot read image {path}: {one_line(error)}") from None


def resized_tensor(image: Image.Image, size: int) -> Tensor:
    """``image`` resized to ``size x size`` (bilinear) as ``[3, size, size]`` in ``[0, 1]``."""
    from PIL import Image

    image = image.resize((size, size), Image.BILINEAR)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, 3).permute(2, 0, 1).float() / 255.0


class ImageFolder(Dataset):
    """``root/<class>/<image>`` folders (torchvision's ImageFolder layout), read with Pillow.

    Classes are the sorted sub-folder names. Images go through ``transform`` (a PIL image to a tensor, e.g. timm's
    ``create_transform``), or without one are resized to RGB tensors ``[3, size, size]`` in ``[0, 1]``. A class
    folder without images is refused. An image that cannot be read raises :class:`UnreadableImage` (one line, naming
    the file) when it is loaded; with ``skip_unreadable`` every image is decoded once up front and those that fail
    are left out, with a one-line count on stderr.
    """

    def __init__(
        self,
        root: str | Path,
        size: int = 224,
        *,
        transform: Callable[[Image.Image], Tensor] | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist")
        self.classes = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        self.samples = [
            (path, index)
            for index, name in enumerate(self.classes)
            for path in sorted((self.root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        self.size = size
        self.transform = transform
        if skip_unreadable:
            self._drop_unreadable()
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if empty:
            readable = " readable" if skip_unreadable else ""
            raise ValueError(
                f"class folder(s) without{readable} images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}: "
                f"{', '.join(empty)}; add images or remove the folder(s)"
            )

    def _drop_unreadable(self) -> None:
        readable, unreadable = [], []
        for path, label in self.samples:
            try:
                open_rgb(path)
                readable.append((path, label))
            except UnreadableImage as error:
                unreadable.append(str(error))
        if unreadable:
            print(f"elfatt: skipped {len(unreadable)} unreadable image(s) under {self.root}; first: {unreadable[0]}",
                  file=sys.stderr)  # fmt: skip
        self.samples = readable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        image = open_rgb(path)
        return (resized_tensor(image, self.size) if self.transform is None else self.transform(image)), label
