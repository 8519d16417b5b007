"""Pathfinder, the Long Range Arena's long-range spatial task, generated locally with numpy.

Pathfinder (Linsley et al., "Learning long-range spatial dependencies with horizontal gated recurrent units",
NeurIPS 2018, https://arxiv.org/abs/1805.08315) as the Long Range Arena uses it (Tay et al., "Long Range Arena: A
Benchmark for Efficient Transformers", ICLR 2021, https://arxiv.org/abs/2011.04006): a dark image with two dots and
curvy dashed paths; the label says whether the dots are the two ends of one path. LRA's data is the
``curv_contour_length_14`` split (paths of 14 dashes) of drewlinsley/pathfinder's ``snakes2.py``, with the settings
in :data:`PRESETS`. This re-implements that sampler:

- two target paths start ``seed_distance`` apart near the middle and grow in turns, dash by dash. A dash starts
  ``gap / 2`` past a pivot that lies ``gap / 2`` beyond the previous dash; its direction turns from the previous one
  by an angle on a grid of one pixel of arc, drawn with weight ``cos(continuity * turn) ** 2`` (so never by
  ``pi / (2 * continuity)`` or more) among the directions whose dash keeps off the other dashes;
- ``num_distractors`` paths of ``distractor_length`` dashes follow where they fit (one that does not fit after a
  few tries is left out); then one dot goes on the start of a target path and the other on the end of the same
  path (label 1) or of the other one (label 0), the choice of path being random.

Where it departs from snakes2.py:

- pixels are 0 or 1 (no antialiasing, no contrast jitter);
- spacing is exact: consecutive dashes of a path are at most ``reach = ceil(gap)`` pixels apart (Chebyshev), any
  other two dashes, and a dash and the dots that may go on the ends of another path, more than ``reach``. Linking
  drawn pixels with steps of up to ``reach`` pixels, the dots of a positive are connected and those of a negative
  are not, by construction; each sample is checked that way all the same, and drawn again if it fails;
- a turn is taken only if a next dash could follow it, and a dead end takes back the last ``n`` dashes of each
  path at its ``n``-th occurrence rather than dropping the image: at 64 pixels LRA's long, stiff paths otherwise
  fit in about 2% of attempts (80-90% here).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from elfatt_lab._progress import progress_bar

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "PathfinderParams",
    "PathfinderSample",
    "generate_pathfinder",
    "params_for",
    "sample_pathfinder",
]

# Part of every cache key: raise it whenever the generated samples change, so old caches are not reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class PathfinderParams:
    """How a Pathfinder image is drawn; lengths in pixels. The defaults are LRA's 32x32 setting.

    Attributes:
        contour_length: dashes in each of the two target paths.
        distractor_length: dashes in each distractor path.
        num_distractors: distractor paths attempted.
        dash_length: length of a dash.
        gap: distance between consecutive dashes of a path, through the pivot between them.
        thickness: width of a dash in pixels (a square stamp).
        continuity: turning sharpness; a turn of ``pi / (2 * continuity)`` or more is never taken.
        seed_distance: distance between the starts of the two target paths.
        marker_radius: radius of the two dots.
        padding: border that no dash enters.
    """

    contour_length: int = 14
    distractor_length: int = 4
    num_distractors: int = 5
    dash_length: float = 2.0
    gap: float = 2.0
    thickness: int = 1
    continuity: float = 1.0
    seed_distance: float = 7.0
    marker_radius: float = 1.5
    padding: int = 1

    def __post_init__(self) -> None:
        if min(self.contour_length, self.distractor_length, self.thickness) < 1 or self.num_distractors < 0:
            raise ValueError(f"path lengths and thickness must be at least 1, num_distractors at least 0: {self}")
        if self.dash_length <= 0 or self.gap < 1 or self.continuity < 1:
            raise ValueError(f"dash_length must be positive, gap and continuity at least 1: {self}")
        if self.seed_distance < 2 * self.marker_radius + self.reach + 1:
            raise ValueError(
                f"seed_distance {self.seed_distance} leaves no room between the dots of the two starts: it must be "
                f"at least 2 * marker_radius + ceil(gap) + 1 = {2 * self.marker_radius + self.reach + 1}"
            )

    @property
    def reach(self) -> int:
        """Largest Chebyshev step between the pixels of consecutive dashes, and the gap that connectivity bridges."""
        return math.ceil(self.gap)


# LRA's settings for 32, 64 and 128 (the docstrings of lra_benchmarks/data/pathfinder.py) in the terms used here:
# paddle_length -> dash_length (5 where LRA keeps snakes2's default), 2 * paddle_margin -> gap (margin 2 of LRA's
# [2, 3] at 128), paddle_thickness -> thickness rounded up to whole pixels, Python 2's integer division for the
# distractors (contour_length / 3 dashes each; 20, 22 and 35 dashes in all).
PRESETS = {
    32: PathfinderParams(),
    64: PathfinderParams(dash_length=5.0, continuity=1.8, seed_distance=12.0, marker_radius=2.5),
    128: PathfinderParams(
        num_distractors=8, dash_length=5.0, gap=4.0, thickness=2, continuity=1.8, seed_distance=20.0, marker_radius=3.0
    ),
}


def params_for(size: int, contour_length: int = 14) -> PathfinderParams:
    """LRA's preset for ``size`` with target paths of ``contour_length`` dashes (Linsley et al.'s difficulties are
    6, 9 and 14; LRA uses 14). As in snakes2.py, distractors are ``contour_length // 3`` dashes long and as many as
    keep the preset's total of distractor dashes."""
    preset = _resolve(size, None)
    if contour_length < 1:
        raise ValueError(f"contour_length must be at least 1, got {contour_length}")
    if contour_length == preset.contour_length:
        return preset
    distractor_length = max(1, contour_length // 3)
    total = preset.num_distractors * preset.distractor_length
    return replace(
        preset,
        contour_length=contour_length,
        distractor_length=distractor_length,
        num_distractors=max(1, round(total / distractor_length)),
    )


class PathfinderSample(NamedTuple):
    """One image ``[size, size]`` (float32, 0 or 1), its label, and the two dots' centres ``[2, 2]`` as (row, col)."""

    image: np.ndarray
    label: int
    dots: np.ndarray


class _Failed(Exception):
    pass


# Dead ends that growing the target paths, or one distractor, may back out of before the attempt is dropped.
TARGET_RETRIES = 20
DISTRACTOR_RETRIES = 3


def _unit(angle: np.ndarray | float) -> np.ndarray:
    """Unit vectors ``[..., 2]`` as (row, col) for angles in radians."""
    if isinstance(angle, float):
        return np.array([math.sin(angle), math.cos(angle)])
    out = np.empty((*angle.shape, 2))
    out[..., 0], out[..., 1] = np.sin(angle), np.cos(angle)
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a ``(2 radius + 1)`` square."""
    out = mask.copy()
    for step in range(1, radius + 1):
        out[step:] |= mask[:-step]
        out[:-step] |= mask[step:]
    rows = out.copy()
    for step in range(1, radius + 1):
        out[:, step:] |= rows[:, :-step]
        out[:, :-step] |= rows[:, step:]
    return out


def _linked(on: np.ndarray, source: np.ndarray, target: np.ndarray, reach: int) -> bool:
    """Whether drawn pixels link ``source`` to ``target`` with steps of up to ``reach`` pixels (Chebyshev)."""
    seen = source & on
    while not (seen & target).any():
        grown = _dilate(seen, reach) & on
        if (grown == seen).all():
            return False
        seen = grown
    return True


class _Dash(NamedTuple):
    end: np.ndarray
    angle: float
    ink: np.ndarray
    footprint: np.ndarray


class _Path:
    """A path's start pixel and its dashes so far."""

    def __init__(self, start: np.ndarray) -> None:
        self.start = start
        self.dashes: list[_Dash] = []

    @property
    def tip(self) -> np.ndarray:
        """Pixel of the far end of the last dash."""
        return np.floor(self.dashes[-1].end + 0.5).astype(np.int64)


class _Canvas:
    """The dashes drawn so far, and which pixels a new dash may not touch.

    A dash's footprint is its pixels, and for the ends of target paths the dot that may go there, dilated by
    ``reach``; ``cover`` counts the footprints over each pixel. It has a ``border`` around the image, counted as
    covered (``outside``) like the padding, so that a dash leaving the image fails the same lookup as one touching
    another path. Pixel ``(r, c)`` of the image is ``cover[r + border, c + border]``.
    """

    def __init__(self, size: int, params: PathfinderParams) -> None:
        self.size, self.params = size, params
        self.border = (
            max(2 * math.ceil(params.dash_length + params.gap) + params.thickness, math.ceil(params.marker_radius)) + 1
        )
        inner = slice(self.border + params.padding, self.border + size - params.padding)
        self.outside = np.ones((size + 2 * self.border,) * 2, dtype=np.int16)
        self.outside[inner, inner] = 0
        self.cover = self.outside.copy()
        self.ink = np.zeros((size, size), dtype=np.int16)
        self.along = np.linspace(0.0, params.dash_length, max(2, math.ceil(2 * params.dash_length) + 1))
        stamp = np.arange(params.thickness) - (params.thickness - 1) // 2
        self.stamp = np.stack(np.meshgrid(stamp, stamp, indexing="ij"), axis=-1).reshape(-1, 2)
        self.dot = np.argwhere(_disc(2 * self.border + 1, np.array([self.border] * 2), params.marker_radius))
        self.dot -= self.border
        # Candidate turns one pixel of arc apart at the pivot's distance to the next dash's end, as in snakes.py.
        radius = params.dash_length + params.gap / 2
        max_turn = math.pi / (2 * params.continuity)
        steps = math.ceil(max_turn * radius) - 1
        self.turns = np.arange(-steps, steps + 1) / radius
        self.turn_weights = np.cos(params.continuity * self.turns) ** 2

    def pixels(self, starts: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """Pixels ``[K, P, 2]`` of K dashes from ``starts`` ``[K, 2]`` in directions ``angles`` ``[K]``."""
        points = starts[:, None, :] + self.along[None, :, None] * _unit(angles)[:, None, :]
        centre = np.floor(points + 0.5).astype(np.int64)
        if len(self.stamp) == 1:
            return centre
        return (centre[:, :, None, :] + self.stamp[None, None]).reshape(len(starts), -1, 2)

    def dots(self, centres: np.ndarray) -> np.ndarray:
        """Pixels ``[K, D, 2]`` of dots at ``centres`` ``[K, 2]`` (integer pixels)."""
        return centres[:, None, :] + self.dot[None]

    def fits(self, pixels: np.ndarray, previous: _Dash | None, dots: np.ndarray | None = None) -> np.ndarray:
        """Which dashes ``[K, P, 2]`` (with ``dots`` ``[K, D, 2]`` at an end) stay in the image and off every
        footprint but ``previous``'s; a dot may cover the padding."""
        rows, cols = pixels[..., 0] + self.border, pixels[..., 1] + self.border
        taken = self.cover[rows, cols]
        if previous is not None:
            taken = taken - previous.footprint[rows, cols]
        free = ~taken.any(axis=-1)
        if dots is not None:
            rows, cols = dots[..., 0] + self.border, dots[..., 1] + self.border
            taken = self.cover[rows, cols] - self.outside[rows, cols]
            if previous is not None:
                taken = taken - previous.footprint[rows, cols]
            free &= ~taken.any(axis=-1)
        return free

    def draw(self, path: _Path, pixels: np.ndarray, start: np.ndarray, angle: float, dot: np.ndarray | None) -> None:
        """Add a dash (pixels ``[P, 2]`` from ``start`` in direction ``angle``, a ``dot`` ``[D, 2]`` at an end or
        None) to ``path``."""
        ink = np.zeros_like(self.cover, dtype=bool)
        ink[pixels[:, 0] + self.border, pixels[:, 1] + self.border] = True
        zone = ink.copy()
        if dot is not None:
            zone[dot[:, 0] + self.border, dot[:, 1] + self.border] = True
        footprint = _dilate(zone, self.params.reach).astype(np.int16)
        ink = ink[self.border : -self.border, self.border : -self.border]
        self.ink += ink
        self.cover += footprint
        path.dashes.append(_Dash(start + self.params.dash_length * _unit(angle), angle, ink, footprint))

    def erase(self, path: _Path) -> None:
        """Take back the last dash of ``path``."""
        dash = path.dashes.pop()
        self.ink -= dash.ink
        self.cover -= dash.footprint


def _seed(canvas: _Canvas, starts: np.ndarray, angle: float, dot: bool) -> _Path:
    """Start a path with one dash from the first of ``starts`` ``[K, 2]`` (integer pixels) where it fits, with room
    for a dot at its start when ``dot``."""
    pixels = canvas.pixels(starts.astype(np.float64), np.full(len(starts), angle))
    dots = canvas.dots(starts) if dot else None
    fitting = np.flatnonzero(canvas.fits(pixels, None, dots))
    if not fitting.size:
        raise _Failed
    first = fitting[0]
    path = _Path(starts[first])
    canvas.draw(path, pixels[first], starts[first].astype(np.float64), angle, None if dots is None else dots[first])
    return path


def _extend(canvas: _Canvas, path: _Path, rng: np.random.Generator, last: bool, dot: bool) -> None:
    """Add one dash to ``path``, its turn drawn among those that fit; unless it is the ``last``, the next dash must
    have room to fit; with ``dot``, the dot that may go at its end must too."""
    previous, half_gap = path.dashes[-1], canvas.params.gap / 2
    angles = previous.angle + canvas.turns
    starts = previous.end + half_gap * (_unit(previous.angle) + _unit(angles))
    pixels = canvas.pixels(starts, angles)
    ends = starts + canvas.params.dash_length * _unit(angles)
    dots = canvas.dots(np.floor(ends + 0.5).astype(np.int64)) if dot else None
    fits = canvas.fits(pixels, previous, dots)
    if fits.any() and not last:
        next_angles = angles[:, None] + canvas.turns
        next_starts = (ends + half_gap * _unit(angles))[:, None, :] + half_gap * _unit(next_angles)
        next_pixels = canvas.pixels(next_starts.reshape(-1, 2), next_angles.ravel())
        fits &= canvas.fits(next_pixels, None).reshape(len(angles), -1).any(axis=1)
    weights = np.cumsum(canvas.turn_weights * fits)
    if weights[-1] <= 0:
        raise _Failed
    chosen = min(int(np.searchsorted(weights, rng.random() * weights[-1], side="right")), len(weights) - 1)
    canvas.draw(path, pixels[chosen], starts[chosen], float(angles[chosen]), None if dots is None else dots[chosen])


def _grow(canvas: _Canvas, paths: list[_Path], length: int, rng: np.random.Generator, retries: int, dot: bool) -> None:
    """Extend ``paths`` in turns to ``length`` dashes each, with room for a dot at their ends when ``dot``.

    At the ``n``-th dead end, the last ``n`` dashes of each path (but not its first) are taken back; after
    ``retries`` dead ends the attempt fails, leaving what is drawn in place.
    """
    moves = [path for _ in range(length - 1) for path in paths]
    done = failures = 0
    while done < len(moves):
        last = done >= len(moves) - len(paths)
        try:
            _extend(canvas, moves[done], rng, last, dot and last)
            done += 1
        except _Failed:
            failures += 1
            if failures > retries:
                raise
            for _ in range(min(done, failures * len(paths))):
                done -= 1
                canvas.erase(moves[done])


def _targets(canvas: _Canvas, rng: np.random.Generator) -> tuple[_Path, _Path]:
    """The two target paths: starts ``seed_distance`` apart, away from the border as in snakes2.py, grown in turns."""
    params, size = canvas.params, canvas.size
    low = int(min(2 * params.seed_distance, size // 2 - 1))
    first = rng.integers(low, size - low, size=2)
    one = _seed(canvas, first[None], rng.uniform(-math.pi, math.pi), dot=True)
    offset = params.seed_distance * _unit(rng.uniform(-math.pi, math.pi))
    second = np.floor(first + offset + 0.5).astype(np.int64)
    other = _seed(canvas, second[None], rng.uniform(-math.pi, math.pi), dot=True)
    _grow(canvas, [one, other], params.contour_length, rng, TARGET_RETRIES, dot=True)
    return one, other


def _add_distractor(canvas: _Canvas, rng: np.random.Generator, tries: int = 5, starts: int = 32) -> None:
    """Add one distractor path to ``canvas``, unless ``tries`` attempts do not fit one (as in snakes2.py)."""
    for _ in range(tries):
        free = np.argwhere(canvas.cover == 0) - canvas.border
        if not len(free):
            return
        try:
            path = _seed(canvas, free[rng.integers(len(free), size=starts)], rng.uniform(-math.pi, math.pi), dot=False)
        except _Failed:
            continue
        try:
            _grow(canvas, [path], canvas.params.distractor_length, rng, DISTRACTOR_RETRIES, dot=False)
            return
        except _Failed:
            while path.dashes:
                canvas.erase(path)


def _disc(size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Boolean image of the pixels within ``radius`` of ``centre``."""
    rows, cols = np.ogrid[:size, :size]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _resolve(size: int, params: PathfinderParams | None) -> PathfinderParams:
    if params is not None:
        return params
    if size not in PRESETS:
        raise ValueError(f"no preset for size {size} (presets: {sorted(PRESETS)}); pass params")
    return PRESETS[size]


def sample_pathfinder(
    rng: np.random.Generator,
    *,
    label: int,
    size: int = 32,
    params: PathfinderParams | None = None,
    max_attempts: int = 1000,
) -> PathfinderSample:
    """Draw one Pathfinder image with the given label.

    Args:
        rng: source of randomness.
        label: 1 for dots at both ends of one path, 0 for dots on two different paths.
        size: image side.
        params: drawing parameters; :data:`PRESETS` ``[size]`` when None.
        max_attempts: images drawn and thrown away (targets that do not fit, a dot touching another path) before
            giving up.

    Returns:
        The image, its label and the dots' centres.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}")
    params = _resolve(size, params)
    for _ in range(max_attempts):
        canvas = _Canvas(size, params)
        try:
            one, other = _targets(canvas, rng)
        except _Failed:
            continue
        for _ in range(params.num_distractors):
            _add_distractor(canvas, rng)
        if rng.random() < 0.5:
            one, other = other, one
        dots = np.stack([one.start, (one if label else other).tip])
        marks = [_disc(size, dot, params.marker_radius) for dot in dots]
        drawn = (canvas.ink > 0) | marks[0] | marks[1]
        if _linked(drawn, marks[0], marks[1], params.reach) == bool(label):
            return PathfinderSample(drawn.astype(np.float32), label, dots)
    raise RuntimeError(f"no Pathfinder image of size {size} fitted in {max_attempts} attempts with {params}")


def _draw(seeds: list[np.random.SeedSequence], labels: list[bool], size: int, params: PathfinderParams) -> np.ndarray:
    """The images of ``seeds`` and ``labels``, ``[n, size, size]``: the work of one chunk."""
    return np.stack(
        [
            sample_pathfinder(np.random.default_rng(seed), label=int(label), size=size, params=params).image
            for seed, label in zip(seeds, labels, strict=True)
        ]
    )


def generate_pathfinder(
    num_samples: int,
    *,
    size: int = 32,
    seed: int,
    params: PathfinderParams | None = None,
    progress: bool = False,
    workers: int = 1,
) -> tuple[Tensor, Tensor]:
    """Draw a balanced set of Pathfinder images, deterministically for a seed.

    Sample ``i`` is drawn by :func:`sample_pathfinder` from its own generator, the ``i + 1``-th child of
    ``np.random.SeedSequence(seed)`` (the first draws the labels), so it does not depend on the others, nor on how
    many processes draw them.

    Args:
        num_samples: number of images; ``num_samples // 2`` of them positive, in a seeded random order.
        size: image side (32, 64 or 128 have LRA's presets).
        seed: seed of everything.
        params: drawing parameters; :data:`PRESETS` ``[size]`` when None.
        progress: show a progress bar.
        workers: processes drawing chunks of images at once (1: this one).

    Returns:
        images ``[num_samples, 1, size, size]`` (float32, 0 or 1) and labels ``[num_samples]`` (int64).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    params = _resolve(size, params)
    label_seed, *sample_seeds = np.random.SeedSequence(seed).spawn(num_samples + 1)
    labels = np.random.default_rng(label_seed).permutation(num_samples) < num_samples // 2
    images = np.zeros((num_samples, 1, size, size), dtype=np.float32)
    chunk = 256
    starts = range(0, num_samples, chunk)
    jobs = [(sample_seeds[i : i + chunk], labels[i : i + chunk].tolist(), size, params) for i in starts]
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(progress_bar(progress, transient=True))
        task = bar.add_task(f"Pathfinder-{size}", total=num_samples) if bar else None
        if workers == 1 or len(jobs) == 1:
            drawn = (_draw(*job) for job in jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, len(jobs)), mp_context=_spawn()))
            drawn = pool.map(_draw, *zip(*jobs, strict=True))
        for start, block in zip(starts, drawn, strict=True):
            images[start : start + len(block), 0] = block
            if bar:
                bar.advance(task, len(block))
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _spawn():
    """Fresh worker processes (fork would copy this process's threads and torch state)."""
    import multiprocessing

    return multiprocessing.get_context("spawn")
