"""Image classification data that needs no download: scikit-learn's digits, and an ImageNet-style folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = ["digits", "ImageFolder"]

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


class ImageFolder(Dataset):
    """``root/<class>/<image>`` folders (torchvision's ImageFolder layout), read with Pillow, resized to ``size``.

    Classes are the sorted sub-folder names; images are RGB tensors in ``[0, 1]``, ``[3, size, size]``.
    """

    def __init__(self, root: str | Path, size: int = 224) -> None:
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
        if not self.samples:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return pixels.reshape(self.size, self.size, 3).permute(2, 0, 1).float() / 255.0, label
