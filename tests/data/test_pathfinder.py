"""Pathfinder: shapes, balance, determinism, and labels that agree with pixel connectivity."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from elfatt_lab.data.pathfinder import PRESETS, PathfinderParams, generate_pathfinder, params_for, sample_pathfinder


def connected(image: np.ndarray, dots: np.ndarray, radius: float, reach: int) -> bool:
    """Breadth-first search over drawn pixels from the first dot to the second, stepping up to ``reach`` pixels
    (Chebyshev) at a time, that is across gaps of ``reach - 1`` blank pixels."""
    size = image.shape[0]
    on = {(r, c) for r, c in zip(*np.nonzero(image > 0.5), strict=True)}

    def dot_pixels(centre: np.ndarray) -> set[tuple[int, int]]:
        return {(r, c) for r, c in on if (r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius**2}

    start, goal = dot_pixels(dots[0]), dot_pixels(dots[1])
    assert start and goal, "a dot is not drawn"
    seen, queue = set(start), deque(start)
    while queue:
        r, c = queue.popleft()
        if (r, c) in goal:
            return True
        for dr in range(-reach, reach + 1):
            for dc in range(-reach, reach + 1):
                pixel = (r + dr, c + dc)
                if pixel in on and pixel not in seen and 0 <= pixel[0] < size and 0 <= pixel[1] < size:
                    seen.add(pixel)
                    queue.append(pixel)
    return False


@pytest.mark.parametrize(("size", "count"), [(32, 6), (64, 4), (128, 2)], ids=["32", "64", "128"])
def test_shapes_dtypes_and_pixel_range(size: int, count: int) -> None:
    images, labels = generate_pathfinder(count, size=size, seed=0)
    assert images.dtype == torch.float32 and labels.dtype == torch.long
    assert images.shape == (count, 1, size, size) and labels.shape == (count,)
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert set(labels.tolist()) == {0, 1}
    # Two paths of 14 dashes at least, plus the dots.
    assert (images.sum(dim=(1, 2, 3)) > 2 * 14 * PRESETS[size].dash_length).all()


@pytest.mark.parametrize("count", [10, 7])
def test_exactly_half_positive(count: int) -> None:
    _, labels = generate_pathfinder(count, seed=1)
    assert labels.sum().item() == count // 2


def test_deterministic_for_a_seed() -> None:
    images, labels = generate_pathfinder(6, seed=5)
    again_images, again_labels = generate_pathfinder(6, seed=5)
    other_images, _ = generate_pathfinder(6, seed=6)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other_images)


@pytest.mark.parametrize(("size", "count"), [(32, 40), (64, 12)], ids=["32", "64"])
def test_labels_agree_with_connectivity(size: int, count: int) -> None:
    """Positives' dots are linked through drawn pixels across the dashes' gaps; negatives' are not, with the same
    tolerance."""
    params = PRESETS[size]
    for i in range(count):
        sample = sample_pathfinder(np.random.default_rng(i), label=i % 2, size=size)
        assert sample.label == i % 2
        assert (sample.image[tuple(sample.dots.T)] == 1).all()
        linked = connected(sample.image, sample.dots, params.marker_radius, params.reach)
        assert linked == bool(sample.label), f"sample {i}: label {sample.label}, linked {linked}"


def test_gaps_are_visible_at_32() -> None:
    """Paths are dashed: with the tolerance reduced to touching pixels, positives' dots are mostly not linked."""
    params = PRESETS[32]
    linked = [
        connected(sample.image, sample.dots, params.marker_radius, 1)
        for sample in (sample_pathfinder(np.random.default_rng(i), label=1) for i in range(10))
    ]
    assert sum(linked) <= 2


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("length", [6, 9])
def test_easier_difficulties_keep_the_distractor_ink(size: int, length: int) -> None:
    preset, params = PRESETS[size], params_for(size, length)
    assert params.contour_length == length and params.distractor_length == length // 3
    ink = params.num_distractors * params.distractor_length - preset.num_distractors * preset.distractor_length
    assert abs(ink) <= params.distractor_length / 2
    assert params.dash_length == preset.dash_length and params.gap == preset.gap
    assert params_for(size) == preset
    images, labels = generate_pathfinder(4, size=size, seed=3, params=params)
    longer, _ = generate_pathfinder(4, size=size, seed=3)
    assert labels.sum().item() == 2 and not torch.equal(images, longer)
    with pytest.raises(ValueError, match="contour_length"):
        params_for(size, 0)


def test_custom_params_and_errors() -> None:
    params = PathfinderParams(contour_length=6, distractor_length=2, num_distractors=2, seed_distance=6.0)
    images, labels = generate_pathfinder(4, size=24, seed=0, params=params)
    assert images.shape == (4, 1, 24, 24) and labels.sum().item() == 2
    with pytest.raises(ValueError, match="seed_distance"):
        PathfinderParams(seed_distance=4.0)
    with pytest.raises(ValueError, match="no preset"):
        generate_pathfinder(2, size=48, seed=0)
    with pytest.raises(ValueError, match="label"):
        sample_pathfinder(np.random.default_rng(0), label=2)
    with pytest.raises(RuntimeError, match="fitted"):
        sample_pathfinder(np.random.default_rng(0), label=1, size=16, params=PRESETS[32], max_attempts=3)


def test_processes_draw_the_same_images():
    one = generate_pathfinder(300, size=32, seed=7)
    two = generate_pathfinder(300, size=32, seed=7, workers=2)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
