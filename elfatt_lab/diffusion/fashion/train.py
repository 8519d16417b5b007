"""Training the models of the evaluation: a class-conditional diffusion model, UNet or DiT (resumable, seeded per
step so a resumed run equals an uninterrupted one) and the classifier whose features judge the samples."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elfatt_lab._arguments import one_line
from elfatt_lab._atomic import atomic_save, atomic_save_figure
from elfatt_lab._csv import write_rows
from elfatt_lab._progress import progress_bar
from elfatt_lab._resume import changed_options
from elfatt_lab._run_folder import owned_run_folder
from elfatt_lab._safe_load import load_weights_only, plain_config
from elfatt_lab.data.fashion_mnist import fashion_mnist_pixels
from elfatt_lab.diffusion.fashion.model import (
    NUM_CLASSES,
    SCHEDULE,
    generate,
    generator_class,
    load_model,
    save_model,
    to_model_range,
    training_scheduler,
)
from elfatt_lab.diffusion.fashion.quality import FashionClassifier, class_accuracy

if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel

__all__ = [
    "ClassifierTrainConfig",
    "DiffusionTrainConfig",
    "JUDGE_DIR",
    "default_model_dir",
    "train_classifier",
    "train_diffusion",
]

# Where the judge (the classifier) lives, and where the first UNet trained here stays, with its evaluation.
JUDGE_DIR = Path("results/diffusion-fashion-mnist")
# Options a resumed run may change; the others must be the checkpoint's.
RESUMABLE = frozenset(
    {
        "steps",
        "out",
        "resume",
        "overwrite",
        "progress",
        "data_dir",
        "checkpoint_every",
        "judge_every",
        "judge_dir",
        "judge_samples",
        "judge_guidance",
        "decay_steps",
    }
)
# The judge's samples during training: classes i % 10 from noise seeds JUDGE_SEED + i, apart from evaluation's 0..n.
JUDGE_SEED = 1_000_000


def default_model_dir(generator: str) -> Path:
    """The folder a generator's training writes and its evaluation reads by default."""
    return Path(f"results/diffusion-fashion-mnist-{generator}")


@dataclass
class DiffusionTrainConfig:
    """Everything a diffusion training run depends on; saved in ``last.pt``. ``out`` defaults to
    :func:`default_model_dir` of ``generator``; ``init_from`` starts from a trained generator's weights (a
    ``.safetensors`` file of the same generator, its ``.json`` beside it) instead of random ones."""

    generator: str = "unet"
    steps: int = 1500
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 200
    # The last decay_steps steps before `steps` take the learning rate to zero along a half cosine (0: constant after
    # the warm-up). A resumed run may set it, to end a constant-rate run with a decay.
    decay_steps: int = 0
    ema_decay: float = 0.999
    # Fraction of training labels replaced by the null class, which classifier-free guidance needs.
    null_probability: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    # Every this many steps (a multiple of checkpoint_every; 0: never), the judge names the classes of judge_samples
    # samples of the EMA weights (DDIM 20 steps, classifier-free guidance judge_guidance): judge_log.csv, and the
    # curve beside the loss's.
    judge_every: int = 0
    judge_samples: int = 100
    judge_guidance: float = 3.0
    judge_dir: Path = JUDGE_DIR
    init_from: Path | None = None
    data_dir: Path | None = None
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = default_model_dir(self.generator)


@dataclass
class ClassifierTrainConfig:
    """The judge's training: every training image, a fixed number of epochs, no model selection."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    data_dir: Path | None = None
    out: Path = JUDGE_DIR
    progress: bool = True


def _training_images(data_dir: Path | None) -> tuple[Tensor, Tensor]:
    images, labels = fashion_mnist_pixels("train", data_dir)
    return to_model_range(images), labels


def _random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each image of ``[B, 1, H, W]`` flipped left to right with probability one half."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _batch_indices(step: int, count: int, batch_size: int, seed: int) -> Tensor:
    """The images of ``step``: epochs are seeded permutations, so any step's batch is known without state."""
    per_epoch = max(count // batch_size, 1)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size]


def _learning_rate_factor(step: int, warmup_steps: int, steps: int, decay_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant, then a half cosine to zero over the last ``decay_steps``
    of ``steps``."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    into_decay = step - (steps - decay_steps)
    if decay_steps and into_decay >= 0:
        factor *= 0.5 * (1 + math.cos(math.pi * min(into_decay, decay_steps) / decay_steps))
    return factor


def _resume_state(config: DiffusionTrainConfig) -> dict | None:
    path = config.out / "last.pt"
    if not config.resume:
        return None
    if not path.is_file():
        raise ValueError(f"--resume: there is no {path}; start without --resume")
    try:
        state = load_weights_only(path)
        saved = state["config"]
        if not isinstance(saved, dict):
            raise TypeError(f"its config is a {type(saved).__name__}, not a dict")
    except Exception as error:  # noqa: BLE001 - any unreadable file, pickled code included, gets one line
        raise ValueError(f"cannot read checkpoint {path} ({one_line(error)}); start afresh without --resume") from None
    refusal = changed_options(saved, plain_config(asdict(config)), RESUMABLE, path)
    if refusal:
        raise ValueError(refusal)
    if state["step"] >= config.steps:
        raise ValueError(f"{path} has trained {state['step']} steps already, --steps is {config.steps}: pass more")
    return state


def train_diffusion(config: DiffusionTrainConfig) -> list[dict]:
    """Train a class-conditional generator (epsilon prediction, DDPM forward process, AdamW, an EMA of the
    weights); every ``checkpoint_every`` steps and at the end, write ``last.pt`` and :func:`_publish`'s files under
    ``config.out``. Returns the log rows (mean loss per 50 steps)."""
    generator_class(config.generator)
    for name in ("steps", "batch_size", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.judge_every < 0 or config.judge_every % config.checkpoint_every:
        raise ValueError(
            f"judge_every must be 0 or a multiple of checkpoint_every ({config.checkpoint_every}), got "
            f"{config.judge_every}"
        )
    if not 0 <= config.decay_steps <= config.steps:
        raise ValueError(f"decay_steps must lie in [0, steps = {config.steps}], got {config.decay_steps}")
    state = _resume_state(config)
    origin = _origin(config)  # checked on a resumed run too, which records where it began
    with owned_run_folder(
        config.out, ("last.pt", f"{config.generator}.safetensors"), resume=config.resume, overwrite=config.overwrite
    ):
        return _train_diffusion(config, state, origin)


def _origin(config: DiffusionTrainConfig) -> dict | None:
    """Where a run with ``init_from`` began: the file and its description's ``trained``, checked to name a model of
    ``config.generator`` with weights beside it."""
    if config.init_from is None:
        return None
    weights, description = config.init_from, config.init_from.with_suffix(".json")
    try:
        saved = json.loads(description.read_text())
        named = saved.get("generator", "unet")
        if named != config.generator:
            raise ValueError(f"it holds a {named}, not a {config.generator}")
        if not weights.is_file():
            raise OSError(f"No such file: {weights}")
    except (OSError, ValueError) as error:
        raise ValueError(f"--init-from {weights}: {one_line(error)}") from None
    return dict(path=str(weights), trained=saved.get("trained"))


def _load_initial_weights(model: nn.Module, path: Path) -> None:
    """``path``'s weights (safetensors, never pickle) into ``model``; one line when they do not fit."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(path))
    except (RuntimeError, OSError) as error:
        raise ValueError(f"--init-from {path} does not fit the model: {one_line(error)}") from None


@contextlib.contextmanager
def _ema_weights(model: nn.Module, ema: EMAModel) -> Iterator[None]:
    """The model holds the EMA weights inside the block and its training weights again after it."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def _train_diffusion(config: DiffusionTrainConfig, state: dict | None, origin: dict | None) -> list[dict]:
    from diffusers.training_utils import EMAModel

    images, labels = _training_images(config.data_dir)
    torch.manual_seed(config.seed)
    model = generator_class(config.generator)()
    if config.init_from is not None and state is None:
        _load_initial_weights(model, config.init_from)
    ema = EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(step, config.warmup_steps, config.steps, config.decay_steps)
    )
    noise_schedule = training_scheduler()
    log: list[dict] = []
    start_step, seconds, judged = 0, 0.0, []
    judge = load_model(config.judge_dir, "classifier", lambda _: FashionClassifier())[0] if config.judge_every else None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_step, log, seconds = state["step"], state["log"], state["seconds"]
            # rows judged before the guidance was an option (and recorded) were judged at 3
            judged = [{**row, "guidance": row.get("guidance", 3.0)} for row in state.get("judged", [])]
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            path = config.out / "last.pt"
            raise ValueError(
                f"{path} does not fit this model ({one_line(error)}); start afresh without --resume"
            ) from None
    model.train()
    losses: list[float] = []
    with progress_bar(config.progress, remaining=True) as progress:
        task = progress.add_task("diffusion", total=config.steps, completed=start_step) if progress else None
        began = time.perf_counter()
        for step in range(start_step, config.steps):
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            index = _batch_indices(step, len(images), config.batch_size, config.seed)
            x, label = images[index], labels[index].clone()
            x = _random_flip(x, generator)
            label[torch.rand(len(x), generator=generator) < config.null_probability] = NUM_CLASSES
            noise = torch.randn(x.shape, generator=generator)
            timesteps = torch.randint(0, SCHEDULE["num_train_timesteps"], (len(x),), generator=generator)
            loss = F.mse_loss(model(noise_schedule.add_noise(x, noise, timesteps), timesteps, label), noise)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            ema.step(model.parameters())
            losses.append(loss.item())
            done = step + 1
            if len(losses) == 50 or done == config.steps:
                elapsed = seconds + time.perf_counter() - began
                log.append(
                    dict(step=done, loss=sum(losses) / len(losses), lr=scheduler.get_last_lr()[0], seconds=elapsed)
                )
                losses = []
                if progress:
                    progress.update(task, description=f"diffusion, loss {log[-1]['loss']:.4f}")
            if progress:
                progress.advance(task)
            if done % config.checkpoint_every == 0 or done == config.steps:
                if judge is not None and (done % config.judge_every == 0 or done == config.steps):
                    judged.append(_judge(model, ema, judge, done, config.judge_samples, config.judge_guidance))
                checkpoint = dict(
                    model=model.state_dict(),
                    ema=ema.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    step=done,
                    log=log,
                    judged=judged,
                    seconds=seconds + time.perf_counter() - began,
                    config=plain_config(asdict(config)),
                )
                atomic_save(checkpoint, config.out / "last.pt")
                _publish(model, ema, config, log, judged, done, checkpoint["seconds"], origin)
    return log


def _judge(model: nn.Module, ema: EMAModel, judge: FashionClassifier, step: int, samples: int, guidance: float) -> dict:
    """The judge's class accuracy on samples of the EMA weights (and the seconds it took), the model left training."""
    began = time.perf_counter()
    labels = [i % NUM_CLASSES for i in range(samples)]
    with _ema_weights(model, ema):
        model.eval()
        images = generate(model, labels, [JUDGE_SEED + i for i in range(samples)], steps=20, guidance=guidance)
        model.train()
    accuracy = class_accuracy(judge, images, torch.tensor(labels))
    seconds = time.perf_counter() - began
    return dict(step=step, class_accuracy=accuracy, samples=samples, seconds=seconds, guidance=guidance)


def _publish(
    model: nn.Module,
    ema: EMAModel,
    config: DiffusionTrainConfig,
    log: list[dict],
    judged: list[dict],
    step: int,
    seconds: float,
    origin: dict | None,
) -> None:
    """Write the EMA weights so far as ``<generator>.safetensors`` + ``.json`` (what evaluation loads: a run can be
    judged while it trains), ``diffusion_log.csv``, ``judge_log.csv`` and ``diffusion_loss.png``."""
    trained = dict(
        steps=step,
        of_steps=config.steps,
        batch_size=config.batch_size,
        seconds=seconds,
        threads=torch.get_num_threads(),
        final_loss=log[-1]["loss"] if log else None,
        class_accuracy=judged[-1]["class_accuracy"] if judged else None,
    )
    if origin is not None:
        trained["initialized_from"] = origin
    description = dict(
        generator=config.generator,
        model_config=model.model_config,
        num_classes=NUM_CLASSES,
        schedule=SCHEDULE,
        trained=trained,
        options=plain_config(asdict(config)),
    )
    with _ema_weights(model, ema):
        save_model(model, config.out, config.generator, description)
    if judged:
        write_rows(judged, config.out / "judge_log.csv")
    if log:  # empty before the first 50 steps
        write_rows(log, config.out / "diffusion_log.csv")
        _plot_loss(log, judged, config.out / "diffusion_loss.png")


def _plot_loss(log: list[dict], judged: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2 if judged else 1, figsize=(11 if judged else 6, 4), squeeze=False)
    axes = panels[0][0]
    axes.plot([row["step"] for row in log], [row["loss"] for row in log], marker=".")
    axes.set_xlabel("step")
    axes.set_ylabel("noise-prediction MSE (mean of 50 steps)")
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    if judged:
        accuracy = panels[0][1]
        for guidance in dict.fromkeys(row["guidance"] for row in judged):
            rows = [row for row in judged if row["guidance"] == guidance]
            steps, values = [row["step"] for row in rows], [100 * row["class_accuracy"] for row in rows]
            accuracy.plot(steps, values, marker="o", label=f"guidance {guidance:g}")
        accuracy.legend()
        accuracy.axhline(70, color="grey", linestyle="--", linewidth=1)
        accuracy.set_xlabel("step")
        accuracy.set_ylabel(f"class accuracy of {judged[-1]['samples']} samples (%), EMA weights")
        accuracy.set_ylim(0, 100)
        accuracy.grid(True, alpha=0.3)
    figure.tight_layout()
    atomic_save_figure(figure, path, dpi=100)
    plt.close(figure)


def train_classifier(config: ClassifierTrainConfig) -> dict:
    """Train :class:`FashionClassifier` on all 60,000 training images (random flips), measure it on the 10,000
    test images, and write ``classifier.safetensors`` + ``classifier.json`` (with that accuracy) under
    ``config.out``. Returns the json's content."""
    images, labels = _training_images(config.data_dir)
    test_images, test_labels = fashion_mnist_pixels("test", config.data_dir)
    torch.manual_seed(config.seed)
    model = FashionClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    per_epoch = math.ceil(len(images) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * per_epoch)
    start = time.perf_counter()
    with progress_bar(config.progress, remaining=True) as progress:
        task = progress.add_task("classifier", total=config.epochs * per_epoch) if progress else None
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed * 1009 + epoch))
            for begin in range(0, len(images), config.batch_size):
                index = order[begin : begin + config.batch_size]
                x = images[index]
                x = _random_flip(x)
                loss = F.cross_entropy(model(x), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if progress:
                    progress.advance(task)
    accuracy = class_accuracy(model, to_model_range(test_images), test_labels)
    result = dict(test_accuracy=accuracy, test_images=len(test_images), seconds=time.perf_counter() - start,
                  options=plain_config(asdict(config)))  # fmt: skip
    save_model(model, config.out, "classifier", result)
    return result
