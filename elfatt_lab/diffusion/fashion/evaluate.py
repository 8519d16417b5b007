"""Image quality and speed of the training-free patch on a diffusion model trained here (UNet or DiT).

Every setting generates the same samples (sample ``i``: class ``i % 10``, noise seed ``i``, DDIM, classifier-free
guidance) and is scored by the Frechet distance of the judge classifier's features to the 10,000 real test images,
the samples' class accuracy under that classifier, and the mean absolute pixel difference to the original attention's
samples. The original attention also generates from other seeds (``original, other seeds``): how much the scores move
from one set of seeds to another, the scale a setting's change is judged on. Speed: the wall time of the generation,
the time inside the self-attention layers during it, and one guided denoising step timed with every setting in turn,
round after round (medians), so that the ratios to the original come from one stretch of the machine's time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from elfatt.diffusion.patch import apply_patch, remove_patch
from elfatt_lab._atomic import atomic_save_figure, atomic_write_text
from elfatt_lab._csv import write_rows
from elfatt_lab._progress import progress_bar
from elfatt_lab.data.fashion_mnist import CLASSES, fashion_mnist_pixels
from elfatt_lab.diffusion.bench import SelfAttentionClock, interleaved_steps
from elfatt_lab.diffusion.fashion.generated import Generated, file_digest, load_generated, run_key, save_generated
from elfatt_lab.diffusion.fashion.model import build_generator, generate, generator_class, load_model, to_model_range
from elfatt_lab.diffusion.fashion.quality import (
    FashionClassifier,
    class_accuracy,
    feature_statistics,
    features,
    frechet_distance,
)
from elfatt_lab.diffusion.fashion.train import JUDGE_DIR, default_model_dir

__all__ = ["SETTINGS", "EvaluationConfig", "Setting", "evaluate", "load_diffusion_model"]


@dataclass(frozen=True)
class Setting:
    """One way to run the model's self-attention: ``patch`` holds :func:`apply_patch`'s options, None the original.
    ``other_seeds``: generate from the seeds after the evaluation's own (n to 2n - 1) instead. ``generators``: the
    generators it is run on by default."""

    name: str
    patch: dict | None
    other_seeds: bool = False
    generators: tuple[str, ...] = ("unet", "dit")


SETTINGS = (
    Setting("original", None),
    Setting("original, other seeds", None, other_seeds=True),
    Setting("elfatt", dict(ratio=0.0, block=16)),
    Setting("elfatt, merge 0.25", dict(ratio=0.25, block=16)),
    Setting("elfatt, merge 0.5", dict(ratio=0.5, block=16)),
    Setting("elfatt, block 8", dict(ratio=0.0, block=8)),
    Setting("tome (merge only) 0.25", dict(ratio=0.25, attention="merge-only")),
    Setting("tome (merge only) 0.5", dict(ratio=0.5, attention="merge-only")),
    # The DiT's 16x16 tokens in 4x4 blocks: 16 blocks, as PixArt's 64x64 tokens at 1024 px in the default 16x16.
    Setting("elfatt, block 4", dict(ratio=0.0, block=4), generators=("dit",)),
    Setting("elfatt, block 4, merge 0.5", dict(ratio=0.5, block=4), generators=("dit",)),
    Setting("elfatt, block 4, first and last block exact", dict(ratio=0.0, block=4, exact_blocks=(1, 1)),
            generators=("dit",)),
    Setting("elfatt, block 4, 1 global head of 4", dict(ratio=0.0, block=4, split=0.25), generators=("dit",)),
    # Agent-SD's way: the patch in part of the denoising steps only (DDIM's 1000-step timesteps, 20 steps: 10 each)
    Setting("elfatt, steps t >= 500 only", dict(ratio=0.0, block=16, timesteps=(500, 999))),
    Setting("elfatt, steps t < 500 only", dict(ratio=0.0, block=16, timesteps=(0, 499))),
    Setting("elfatt, merge 0.5, steps t < 500 only", dict(ratio=0.5, block=16, timesteps=(0, 499))),
)  # fmt: skip


@dataclass
class EvaluationConfig:
    """What the evaluation generates and where it reads and writes."""

    generator: str = "unet"
    model_dir: Path | None = None
    judge_dir: Path = JUDGE_DIR
    out: Path | None = None
    samples: int = 500
    steps: int = 20
    guidance: float = 3.0
    batch_size: int = 50
    timing_rounds: int = 5
    settings: Sequence[str] | None = None  # None: every setting of the generator
    grid_columns: int = 20
    data_dir: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model_dir is None:
            self.model_dir = self.out or default_model_dir(self.generator)
        if self.out is None:
            self.out = self.model_dir
        if self.settings is None:
            self.settings = [setting.name for setting in SETTINGS if self.generator in setting.generators]


def load_diffusion_model(folder: Path, generator: str = "unet") -> tuple[nn.Module, dict]:
    """The trained ``generator`` of ``folder`` (``<generator>.safetensors`` and ``.json``) and its description."""
    generator_class(generator)
    return load_model(folder, generator, build_generator)


def _apply(model: nn.Module, setting: Setting) -> None:
    remove_patch(model)
    if setting.patch is not None:
        apply_patch(model, **setting.patch)


def _check(config: EvaluationConfig) -> list[Setting]:
    known = {setting.name: setting for setting in SETTINGS}
    unknown = [name for name in config.settings if name not in known]
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; choose from {', '.join(map(repr, known))}")
    for name in ("samples", "steps", "batch_size", "timing_rounds"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.samples < 2:
        raise ValueError("samples must be >= 2 for a covariance")
    # The original attention always runs first: every ratio and pixel difference is taken against it.
    return [known[name] for name in dict.fromkeys(["original", *config.settings])]


def evaluate(config: EvaluationConfig) -> list[dict]:
    """Run every setting; write ``quality.csv``, ``quality.md`` and ``samples.png`` under ``config.out`` and
    return the rows (the first is real training images, the floor of the Frechet distance at this sample count)."""
    settings = _check(config)
    weights = config.model_dir / f"{config.generator}.safetensors"
    digest = file_digest(weights) if weights.is_file() else ""
    model, description = load_diffusion_model(config.model_dir, config.generator)
    if file_digest(weights) != digest:
        raise ValueError(f"{weights} changed while it was read (is a training writing it?); stop that and retry")
    classifier, judge = load_model(config.judge_dir, "classifier", lambda _: FashionClassifier())
    test_images, _ = fashion_mnist_pixels("test", config.data_dir)
    real = feature_statistics(features(classifier, to_model_range(test_images)))
    labels = torch.arange(config.samples) % 10
    seeds = list(range(config.samples))

    train_images, train_labels = fashion_mnist_pixels("train", config.data_dir)
    pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[: config.samples]
    floor_images = to_model_range(train_images[pick])
    rows = [
        dict(
            setting=f"real training images ({config.samples})",
            options="",
            frechet_distance=frechet_distance(feature_statistics(features(classifier, floor_images)), real),
            class_accuracy=class_accuracy(classifier, floor_images, train_labels[pick]),
        )
    ]
    samples: dict[str, Tensor] = {}
    with progress_bar(config.progress) as progress:
        for setting in settings:
            task = progress.add_task(setting.name, total=config.samples) if progress else None
            generated = _generated(model, setting, config, digest, labels, seeds, progress, task)
            images = generated.images
            row = dict(
                setting=setting.name,
                options=_describe(setting),
                frechet_distance=frechet_distance(feature_statistics(features(classifier, images)), real),
                class_accuracy=class_accuracy(classifier, images, labels),
            )
            if not setting.other_seeds:
                samples[setting.name] = images
                row.update(
                    pixel_difference=(images - samples["original"]).abs().mean().item() / 2,
                    seconds_per_sample=generated.seconds / config.samples,
                    self_attention_seconds_per_sample=generated.self_attention_seconds / config.samples,
                )
            rows.append(row)
    timed = [setting for setting in settings if not setting.other_seeds]
    _time_steps(model, timed, [row for row in rows[1:] if "seconds_per_sample" in row], config)
    remove_patch(model)
    base = rows[1]
    for row in rows[1:]:
        if "step_ms" not in row:
            continue
        row["sample_speedup"] = base["seconds_per_sample"] / row["seconds_per_sample"]
        row["step_speedup"] = base["step_ms"] / row["step_ms"]
        row["self_attention_speedup"] = base["self_attention_ms"] / row["self_attention_ms"]
    config.out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, config.out / "quality.csv")
    _write_summary(rows, config, judge, description)
    _save_grid(samples, labels, config.grid_columns, config.out / "samples.png")
    return rows


def _generated(
    model: nn.Module,
    setting: Setting,
    config: EvaluationConfig,
    weights_digest: str,
    labels: Tensor,
    seeds: list[int],
    progress: Any,
    task: Any,
) -> Generated:
    """The setting's samples: those an earlier run of the same evaluation (on as many threads, so that its times
    compare) saved under ``out/generated``, else generated now (timed, with the time inside self-attention) and
    saved there."""
    if setting.other_seeds:
        seeds = [seed + config.samples for seed in seeds]
    key = run_key(
        weights_digest, runs_elfatt=setting.patch is not None, setting=setting.patch, seeds=[seeds[0], len(seeds)],
        labels="i % 10", steps=config.steps, guidance=config.guidance, batch_size=config.batch_size,
        threads=torch.get_num_threads(),
    )  # fmt: skip
    path = config.out / "generated" / f"{_slug(setting.name)}.safetensors"
    saved = load_generated(path, key)
    if saved is not None:
        if progress:
            progress.update(task, completed=config.samples, description=f"{setting.name} (saved)")
        return saved
    _apply(model, setting)
    clock = SelfAttentionClock(model.denoiser)
    start = time.perf_counter()
    images = generate(
        model,
        labels.tolist(),
        seeds,
        steps=config.steps,
        guidance=config.guidance,
        batch_size=config.batch_size,
        on_batch=(lambda n: progress.advance(task, n)) if progress else None,
    )
    generated = Generated(images, time.perf_counter() - start, clock.seconds)
    clock.remove()
    save_generated(path, key, generated)
    return generated


def _slug(name: str) -> str:
    """A file name for the setting; two settings that met on one would only regenerate each other's samples (the
    saved key holds the setting's options), never take them."""
    for sign, word in ((">=", "ge"), ("<=", "le"), (">", "gt"), ("<", "lt")):
        name = name.replace(sign, word)
    return "".join(character if character.isalnum() else "-" for character in name).strip("-")


def _describe(setting: Setting) -> str:
    if setting.patch is None:
        return "diffusers' attention processors" + (", noise seeds n to 2n - 1" if setting.other_seeds else "")
    return "apply_patch(" + ", ".join(f"{key}={value!r}" for key, value in setting.patch.items()) + ")"


def _time_steps(model: nn.Module, settings: list[Setting], rows: list[dict], config: EvaluationConfig) -> None:
    """Median guided-step and self-attention ms of every setting (one guided denoising step: the conditional and
    unconditional halves in one batch), measured in turn round after round."""
    generator = torch.Generator().manual_seed(0)
    batch = config.batch_size
    sample = torch.randn(2 * batch, 1, 32, 32, generator=generator)
    classes = torch.arange(batch) % 10
    inputs = (sample, torch.tensor(500), torch.cat([classes, torch.full_like(classes, model.null_class)]))
    variants = {setting.name: setting.patch for setting in settings}
    measured = interleaved_steps(model, model.denoiser, lambda: model(*inputs), variants, config.timing_rounds)
    for row in rows:
        row["step_ms"] = measured[row["setting"]]["step_ms"]
        row["self_attention_ms"] = measured[row["setting"]]["self_attention_ms"]


def _write_summary(rows: list[dict], config: EvaluationConfig, judge: dict, description: dict) -> None:
    threads = torch.get_num_threads()
    trained = description.get("trained", {})
    lines = [
        f"Generator: {description.get('generator', 'unet')} {description.get('model_config', '')}, trained "
        f"{trained.get('steps')} steps of batch {trained.get('batch_size')}"
        + (f" after {trained['initialized_from']}" if trained.get("initialized_from") else "")
        + ".",
        "",
        f"{config.samples} samples (class i % 10, noise seed i), DDIM {config.steps} steps, guidance "
        f"{config.guidance:g}, batch {config.batch_size} (x2 for guidance), fp32, {threads} CPU threads. Frechet "
        f"distance in the features of the classifier trained here (test accuracy {100 * judge['test_accuracy']:.1f}%"
        "), to the 10,000 test images: not Inception FID. Step times: one guided step at batch "
        f"{2 * config.batch_size}, median of {config.timing_rounds} rounds with the settings in turn. Pixel diff: "
        "the mean absolute difference to the original attention's sample of the same seed, as a fraction of the "
        "pixel range.",
        "",
        "| setting | Frechet distance | class acc | pixel diff to original | s / sample | x | self-attn s / sample | "
        "step ms | x | self-attn ms | x |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "step_ms" not in row:
            lines.append(
                f"| {row['setting']} | {row['frechet_distance']:.2f} | {100 * row['class_accuracy']:.1f}% "
                "| | | | | | | | |"
            )
            continue
        lines.append(
            f"| {row['setting']} | {row['frechet_distance']:.2f} | {100 * row['class_accuracy']:.1f}% | "
            f"{row['pixel_difference']:.4f} | {row['seconds_per_sample']:.3f} | {row['sample_speedup']:.2f} | "
            f"{row['self_attention_seconds_per_sample']:.3f} | {row['step_ms']:.0f} | {row['step_speedup']:.2f} | "
            f"{row['self_attention_ms']:.0f} | {row['self_attention_speedup']:.2f} |"
        )
    lines += _within_spread(rows)
    lines += ["", "Settings:", ""]
    lines += [f"- {row['setting']}: {row['options']}" for row in rows[1:]]
    atomic_write_text("\n".join(lines) + "\n", config.out / "quality.md")


ACCURACY_MARGIN = 0.02  # the bound on a setting's class-accuracy change


def _within_spread(rows: list[dict]) -> list[str]:
    """Which settings stay within the original's seed-to-seed spread in Frechet distance (the difference between
    its two disjoint seed sets) and within 2 points of its class accuracy; nothing without the second seed set."""
    by_name = {row["setting"]: row for row in rows}
    other = by_name.get("original, other seeds")
    if other is None:
        return []
    original = by_name["original"]
    spread = abs(other["frechet_distance"] - original["frechet_distance"])
    lines = [
        "",
        f"The original's seed-to-seed spread: Frechet distance {spread:.2f} (seeds 0 to n - 1 against n to 2n - 1), "
        f"class accuracy {100 * abs(other['class_accuracy'] - original['class_accuracy']):.1f} points. Against "
        f"the original (same seeds), within that Frechet spread and within {100 * ACCURACY_MARGIN:g} points of its "
        "class accuracy:",
        "",
    ]
    for row in rows:
        if "pixel_difference" not in row or row["setting"] == "original":
            continue
        distance = row["frechet_distance"] - original["frechet_distance"]
        accuracy = row["class_accuracy"] - original["class_accuracy"]
        # accuracies are counts over n: 0.72 - 0.70 must count as the 2 points it is
        verdict = "yes" if abs(distance) <= spread and abs(accuracy) <= ACCURACY_MARGIN + 1e-9 else "no"
        lines.append(
            f"- {row['setting']}: {verdict} (Frechet distance {distance:+.2f}, class accuracy {100 * accuracy:+.1f})"
        )
    return lines


def _save_grid(samples: dict[str, Tensor], labels: Tensor, columns: int, path: Path) -> None:
    """One row per setting, the first ``columns`` samples (same seeds in every row), class names on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(labels))
    figure, axes = plt.subplots(
        len(samples), columns, figsize=(0.75 * columns + 1.6, 0.8 * len(samples) + 0.4), squeeze=False
    )
    for row, (name, images) in enumerate(samples.items()):
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(images[column, 0].numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            if row == 0:
                axis.set_title(CLASSES[int(labels[column])], fontsize=6)
    figure.tight_layout(pad=0.2)
    atomic_save_figure(figure, path, dpi=110)
    plt.close(figure)
