"""Small Fashion-MNIST idx files written by the tests, for every test that needs the data set."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from elfatt_lab.data.fashion_mnist import FILES


def write_idx(path: Path, array: torch.Tensor, *, gz: bool = True) -> None:
    header = (0x0800 + array.dim()).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_fashion_files(folder: Path, train_count: int = 60, test_count: int = 20, seed: int = 0) -> None:
    """Small idx files: image ``i`` of class ``c`` has every pixel ``10 * c + i % 10``, so labels are readable."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_count), ("test", test_count)):
        labels = torch.randint(10, (count,), generator=generator)
        images = (10 * labels + torch.arange(count) % 10)[:, None, None].expand(count, 28, 28).contiguous()
        images_name, labels_name = FILES[split]
        write_idx(folder / images_name, images, gz=split == "train")
        write_idx(folder / labels_name, labels, gz=split == "train")
