"""Training and inference images/s of several mechanisms measured side by side: one process, one batch of the
task's images, every mechanism in turn round after round, medians. Ratios between mechanisms then come from the
same stretch of the machine's time, which the runs themselves (minutes apart, sometimes sessions apart) do not give.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from elfatt_lab.train.loop import TrainConfig, build_optimizer, model_of, task_of

__all__ = ["measure_throughput"]


def _images_per_second(work, images: int, passes: int) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        work()
    return images * passes / (time.perf_counter() - start)


def _spread(values: list[float]) -> str:
    middle = statistics.median(values)
    return f"{100 * (min(values) / middle - 1):+.0f}/{100 * (max(values) / middle - 1):+.0f}"


def measure_throughput(
    config: TrainConfig, mechanisms: Sequence[str], *, rounds: int = 5, passes: int = 2
) -> list[dict[str, float | str]]:
    """For each mechanism, the small transformer of ``config`` (its dim, depth, heads, patch, pool, batch size) on
    one batch of the task's training images: training images/s (forward, backward, AdamW step) and inference
    images/s (eval mode, no gradients), each the median over ``rounds`` rounds of ``passes`` passes, after one
    warm-up round. Returns one row per mechanism."""
    task = task_of(config)
    batch = min(config.batch_size, len(task.train))
    images = torch.stack([task.train[i][0] for i in range(batch)])
    labels = torch.stack([torch.as_tensor(task.train[i][1]) for i in range(batch)])
    works = {}
    for mechanism in mechanisms:
        torch.manual_seed(config.seed)
        run = replace(config, model=mechanism)
        model = model_of(run, task)
        optimizer = build_optimizer(model, run)

        def train_step(model=model, optimizer=optimizer) -> None:
            model.train()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.inference_mode()
        def infer(model=model) -> None:
            model.eval()
            model(images)

        works[mechanism] = (train_step, infer)
    measured: dict[str, list[tuple[float, float]]] = {mechanism: [] for mechanism in mechanisms}
    for round_index in range(rounds + 1):
        for mechanism, (train_step, infer) in works.items():
            result = (_images_per_second(train_step, batch, passes), _images_per_second(infer, batch, passes))
            if round_index:  # round 0 warms up
                measured[mechanism].append(result)
    return [
        dict(
            mechanism=mechanism,
            train_images_per_s=statistics.median(train for train, _ in results),
            infer_images_per_s=statistics.median(infer for _, infer in results),
            # (slowest, fastest) round over the median, in percent: how steady the machine was
            train_spread_pct=_spread([train for train, _ in results]),
            infer_spread_pct=_spread([infer for _, infer in results]),
            batch_size=batch,
            rounds=rounds,
            threads=torch.get_num_threads(),
        )
        for mechanism, results in measured.items()
    ]
