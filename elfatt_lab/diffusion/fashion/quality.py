"""How good generated Fashion-MNIST images are: a small convnet classifier trained here, the Frechet distance of its
features between generated and real images, and the samples' class accuracy under it.

The Frechet distance is FID's formula (Heusel et al. 2017) in the 128-d feature space of this classifier, not in
Inception's: its values are comparable between settings of one evaluation, not with published FIDs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FEATURES", "FashionClassifier", "class_accuracy", "feature_statistics", "frechet_distance", "features"]

FEATURES = 128


def _conv(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()]


class FashionClassifier(nn.Module):
    """Five 3x3 convolutions with batch norm on ``[B, 1, 32, 32]`` images in ``[-1, 1]``, pooled to
    :data:`FEATURES` features, and a linear head over the 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv(1, 32), *_conv(32, 32), nn.MaxPool2d(2),
            *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2),
            *_conv(64, FEATURES), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


@torch.inference_mode()
def features(classifier: FashionClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """The classifier's features ``[n, FEATURES]`` of ``images`` (float64), in eval mode."""
    classifier.eval()
    return torch.cat(
        [classifier.features(images[i : i + batch_size]).double() for i in range(0, len(images), batch_size)]
    )


@torch.inference_mode()
def class_accuracy(classifier: FashionClassifier, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """The fraction of ``images`` the classifier puts in the class of ``labels``."""
    classifier.eval()
    predicted = torch.cat(
        [classifier(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)]
    )
    return (predicted == labels).double().mean().item()


def feature_statistics(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[d]`` and covariance ``[d, d]`` (unbiased, float64) of ``values`` ``[n, d]``, n >= 2."""
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(f"need features [n >= 2, d], got {tuple(values.shape)}")
    values = values.double()
    return values.mean(0), torch.cov(values.T)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> float:
    """``|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians given as (mean, covariance).

    ``tr (S1 S2)^(1/2)`` is computed as ``tr (S1^(1/2) S2 S1^(1/2))^(1/2)``, a symmetric positive semi-definite
    matrix with the same eigenvalues, so only symmetric eigendecompositions are needed (float64).
    """
    (mean1, cov1), (mean2, cov2) = first, second
    root1 = _psd_sqrt(cov1.double())
    middle = root1 @ cov2.double() @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).double().square().sum() + cov1.trace() + cov2.trace() - 2 * trace_root
    return distance.item()
