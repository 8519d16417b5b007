"""The accuracy experiments: one small transformer, five attention mechanisms, fixed seeds, one command per task.

``python -m elfatt_lab.train.experiments --task digits`` trains (a) global softmax attention, (b) ELFATT,
(c) ELFATT's blockified part alone, (d) its global linear part alone and (e) Efficient Attention, each with the
same layers and options and the seeds given, then writes ``runs.csv`` and ``summary.md`` (mean and spread of the
final validation accuracy, seconds per epoch, peak memory) and ``accuracy.png`` under ``--out``. Runs that an
earlier invocation finished in the same folder with the same settings stay in the summary, so seeds can be added
one command at a time.

Global softmax attention is ``vanilla`` (plain matmuls) on digits and ``sdpa`` (the same attention through
PyTorch's fused kernel, 3x faster on this CPU) where the budget is tight.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from elfatt_lab._atomic import atomic_save_figure, atomic_write_text
from elfatt_lab._csv import write_rows
from elfatt_lab.attention.registry import MECHANISMS as MECHANISM_REGISTRY
from elfatt_lab.train.checkpoint import CheckpointError, check_resume, load_checkpoint, saved_config
from elfatt_lab.train.loop import TrainConfig, train

__all__ = ["MECHANISMS", "PRESETS", "main", "seeds_label"]

MECHANISMS = ("vanilla", "elfatt", "elfatt-window", "elfatt-linear", "efficient")
FAST_MECHANISMS = ("sdpa", *MECHANISMS[1:])
FASHION_MECHANISMS = ("sdpa", "sdpa-lepe", "elfatt", "elfatt-window", "elfatt-linear", "swin", "efficient", "flatten")
FASHION_MECHANISMS += ("agent",)
# The mechanisms that leave padded tokens out, of them those worth a day of this machine: ELFATT, its two parts, two
# linear peers and softmax attention (the slowest by far, last).
LRA_MECHANISMS = ("elfatt", "elfatt-window", "elfatt-linear", "efficient", "flatten", "sdpa")
# Per experiment: the task and options, sized so that one run takes minutes on 2 CPU cores (how each was sized:
# docs/lab-notes.md).
PRESETS: dict[str, dict] = {
    "digits": dict(task="digits", epochs=30, batch_size=64, lr=3e-3, dim=64, depth=2, heads=4, patch=1),
    # Patches of 2x2 pixels (256 tokens) instead of LRA's pixels (1024).
    "pathfinder32": dict(
        task="pathfinder32", epochs=20, batch_size=64, lr=1e-3, dim=32, depth=2, heads=4, patch=2,
        train_samples=8000, val_samples=1000,
    ),
    # Linsley et al.'s easiest paths (6 dashes); with mean pooling no model left chance in this budget, max pooling
    # learns (see the README).
    "pathfinder32-len6": dict(
        task="pathfinder32", path_length=6, pool="max", epochs=12, batch_size=64, lr=1e-3, dim=32, depth=2,
        heads=4, patch=2, train_samples=40000, val_samples=2000, mechanisms=FAST_MECHANISMS,
    ),
    # Fashion-MNIST at 14x14 tokens (2x2-pixel patches): every mechanism, LePE given to softmax attention too.
    "fashion-mnist": dict(
        task="fashion-mnist", epochs=5, batch_size=128, lr=2e-3, dim=32, depth=2, heads=4, patch=2,
        val_samples=5000, augment=True, mechanisms=FASHION_MECHANISMS,
    ),
    # ... and at 28x28 tokens (pixels), where global context spans 784 tokens: 3 epochs of 8,000 of the 55,000
    # training images (the same draw for every mechanism), in batches of 32; validation and test splits as above.
    "fashion-mnist-28": dict(
        task="fashion-mnist", epochs=3, batch_size=32, lr=1e-3, warmup_epochs=0.25, dim=32, depth=2, heads=4,
        patch=1, val_samples=5000, train_subset=8000, augment=True,
        mechanisms=("sdpa-lepe", "elfatt", "elfatt-window"),
    ),
    "listops": dict(
        task="listops", epochs=10, batch_size=64, lr=1e-3, dim=32, depth=2, heads=4, train_samples=4000,
        val_samples=1000, max_length=500,
    ),
    # The Long Range Arena at its own sizes. ListOps: LRA's 96,000 / 2,000 / 2,000 expressions of 500-2,000 tokens,
    # padding left out of attention and pooling; LRA's 5,000 steps of 32 (with 1,000 warm-up steps) become 6,000
    # steps of 32 (24 epochs of 8,000, 4 of warm-up), its 512-wide 6-layer model a 64-wide 2-layer one, ELFATT's
    # blocks 64 tokens long.
    "lra-listops": dict(
        task="listops", max_length=2000, train_samples=96000, val_samples=2000, epoch_samples=8000, epochs=24,
        warmup_epochs=4.0, batch_size=32, lr=1e-3, dim=64, depth=2, heads=4, block=64, mechanisms=LRA_MECHANISMS,
        published={"Transformer (LRA, Tay et al. 2021, Table 1)": 36.37, "majority class (0)": 15.8},
    ),
    # Pathfinder-32 at LRA's difficulty (14-dash paths): 100,000 training images (LRA: 160,000) seen 10 times
    # (LRA: 200 epochs) in 50 epochs of 20,000; 2x2-pixel patches (256 tokens; LRA: 1,024 pixels), max pooling.
    "lra-pathfinder32": dict(
        task="pathfinder32", train_samples=100000, val_samples=2000, epoch_samples=20000, epochs=50, batch_size=64,
        lr=1e-3, dim=64, depth=2, heads=4, patch=2, pool="max", mechanisms=LRA_MECHANISMS,
        published={"Transformer (LRA, Tay et al. 2021, Table 1)": 71.40, "chance": 50.0},
    ),
}  # fmt: skip
# Preset entries that are not training options.
NOT_OPTIONS = ("mechanisms", "published")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.train.experiments", description=__doc__)
    parser.add_argument("--task", choices=sorted(PRESETS), default="digits", help="the experiment (a preset)")
    parser.add_argument("--mechanisms", nargs="+", help="default: the preset's five")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--out", type=Path, default=None, help="default results/train-<task>")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of these settings and continue the unfinished ones from their last.pt "
        "(default: every run asked for starts over)",
    )
    parser.add_argument("--summarize", action="store_true", help="rewrite the summary of the finished runs, train none")
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="measure train and inference images/s of the mechanisms side by side (throughput.csv), train none",
    )
    args = parser.parse_args(argv)
    out = args.out or Path("results") / f"train-{args.task}"
    preset = dict(PRESETS[args.task], **({"epochs": args.epochs} if args.epochs else {}))
    mechanisms = args.mechanisms or preset.get("mechanisms", MECHANISMS)
    base = TrainConfig(progress=False, **{key: value for key, value in preset.items() if key not in NOT_OPTIONS})
    if args.throughput:
        from elfatt_lab.train.throughput import measure_throughput

        measured = measure_throughput(base, mechanisms)
        write_rows(measured, out / "throughput.csv")
        unit = _rate_unit(preset)
        for row in measured:
            train_rate, infer_rate = row["train_images_per_s"], row["infer_images_per_s"]
            print(f"{row['mechanism']}: train {train_rate:.0f} {unit} ({row['train_spread_pct']}%), "
                  f"inference {infer_rate:.0f} {unit} ({row['infer_spread_pct']}%)", flush=True)  # fmt: skip
    if args.summarize or args.throughput:
        rows = _earlier_rows(out, base, set())
        if not rows and args.throughput:
            print(f"wrote {out / 'throughput.csv'}; no finished runs to summarise yet")
            return 0
        if not rows:
            parser.error(f"no finished runs of the {args.task} settings in {out}")
        _write_summary(rows, out, args.task, preset)
        return 0
    asked = {(mechanism, seed) for mechanism in mechanisms for seed in args.seeds}
    finished = {(row["mechanism"], row["seed"]) for row in _earlier_rows(out, base, set())} if args.resume else set()
    rows = _earlier_rows(out, base, asked - finished)
    for mechanism in mechanisms:
        for seed in args.seeds:
            if (mechanism, seed) in finished:
                print(f"{mechanism} seed {seed}: finished before, kept", flush=True)
                continue
            start = time.perf_counter()
            config = _run_config(base, out, mechanism, seed)
            if args.resume:
                config, earlier_wall = _resumed(config)
            else:
                earlier_wall = 0.0
            history = train(config)
            wall = earlier_wall + time.perf_counter() - start
            _write_run_record(config.out, asdict(config), len(history))
            final = history[-1]
            row = dict(
                mechanism=mechanism,
                seed=seed,
                val_acc=final["val_acc"],
                best_val_acc=max(row["val_acc"] for row in history),
                seconds_per_epoch=statistics.median(row["epoch_seconds"] for row in history),
                train_images_per_s=statistics.median(row["train_images_per_s"] for row in history),
                peak_mib=final["peak_mib"],
                wall_seconds=wall,
            )
            rows.append({**row, **_test_numbers(_run_dir(out, mechanism, seed))})
            print(f"{mechanism} seed {seed}: val acc {final['val_acc']:.4f} in {wall:.0f}s", flush=True)
            _write_summary(rows, out, args.task, preset)
    return 0


def _test_numbers(run: Path) -> dict[str, float]:
    """A run's held-out test accuracy (final model and best-validation model) and inference images/s, when the task
    has a test split (``test.json``)."""
    path = run / "test.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return dict(
        test_acc=results["final"]["test_acc"],
        best_val_model_test_acc=results["best_val"]["test_acc"],
        infer_images_per_s=results["final"]["images_per_s"],
    )


def _run_dir(out: Path, mechanism: str, seed: int | float) -> Path:
    return out / f"{mechanism}-seed{int(seed)}"


def _run_config(base: TrainConfig, out: Path, mechanism: str, seed: int) -> TrainConfig:
    """One run of the experiment; asking for a (mechanism, seed) again redoes that run, in its own folder."""
    return replace(base, model=mechanism, seed=seed, out=_run_dir(out, mechanism, seed), overwrite=True)


def _resumed(config: TrainConfig) -> tuple[TrainConfig, float]:
    """``config`` set to continue its run folder's ``last.pt`` where that checkpoint is of the same settings, with
    the seconds its epochs trained (their validation passes not counted: the rest of an interrupted run's wall time
    is lost); unchanged and 0 where there is nothing to continue."""
    last = config.out / "last.pt"
    if not last.is_file():
        return config, 0.0
    resumed = replace(config, resume=last, overwrite=False)
    try:
        state = load_checkpoint(last)
        check_resume(state, resumed, last)
    except CheckpointError as error:
        print(f"{config.out}: starting over ({error})", flush=True)
        return config, 0.0
    epochs = state["history"]
    print(f"{config.out}: resuming after epoch {len(epochs)}", flush=True)
    return resumed, sum(row["epoch_seconds"] for row in epochs)


def _earlier_rows(out: Path, base: TrainConfig, rerun: set[tuple[str, int]]) -> list[dict]:
    """Rows of ``out/runs.csv`` whose run is not about to be redone and that trained all epochs of exactly this
    experiment's settings (by the run's ``run.json``, else its last checkpoint); anything else there is dropped."""
    path = out / "runs.csv"
    if not path.is_file():
        return []
    kept = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            mechanism, seed = row["mechanism"], int(row["seed"])
            record = None if (mechanism, seed) in rerun else _run_record(_run_dir(out, mechanism, seed))
            expected = _run_config(base, out, mechanism, seed)
            if record is None or record != (_comparable(asdict(expected)), expected.epochs):
                continue
            numbers = {key: float(value) for key, value in row.items() if key not in ("mechanism", "seed")}
            kept.append(dict(mechanism=mechanism, seed=seed, **numbers))
    return kept


def _run_record(run: Path) -> tuple[dict, int] | None:
    """A run's settings and the epochs it trained: from its ``last.pt`` when there (refreshing ``run.json``), else
    from ``run.json`` (committed with the results, unlike checkpoints); None when neither is readable."""
    checkpoint, record = run / "last.pt", run / "run.json"
    if checkpoint.is_file():
        try:
            state = load_checkpoint(checkpoint)
        except CheckpointError:
            return None
        _write_run_record(run, saved_config(state, TrainConfig()), int(state["epoch"]) + 1)
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    # an option added since the run was recorded was at its default, which keeps the old behaviour
    return {**_comparable(asdict(TrainConfig())), **data["settings"]}, data["epochs_trained"]


def _write_run_record(run: Path, config: dict, epochs_trained: int) -> None:
    record = dict(settings=_comparable(config), epochs_trained=epochs_trained)
    atomic_write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", run / "run.json")


def _comparable(config: dict) -> dict:
    """The settings of ``config`` as JSON gives them back (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(_settings(config), default=str))


def _settings(config: dict) -> dict:
    """What a run's results depend on: its config less where it was written, how, and whether it showed progress."""
    return {key: value for key, value in config.items() if key not in ("out", "resume", "overwrite", "progress")}


def seeds_label(rows: list[dict]) -> str:
    """How many seeds each mechanism in ``rows`` has, for a plot's title: "3 seeds", or "2 to 3 seeds per
    mechanism" when some have fewer."""
    counts = Counter(row["mechanism"] for row in rows).values()
    fewest, most = min(counts), max(counts)
    if fewest == most:
        return f"{most} seed{'s' * (most > 1)}"
    return f"{fewest} to {most} seeds per mechanism"


def _rate_unit(preset: dict) -> str:
    return "sequences/s" if preset["task"] == "listops" else "img/s"


def _write_summary(rows: list[dict], out: Path, task: str, preset: dict) -> None:
    write_rows(rows, out / "runs.csv")
    seeds = sorted({row["seed"] for row in rows})
    command = f"python -m elfatt_lab.train.experiments --task {task} --seeds {' '.join(map(str, seeds))}"
    # Tasks with a held-out test split report it; the others their final validation accuracy.
    tested = all("test_acc" in row for row in rows)
    measure = "test_acc" if tested else "val_acc"
    side_by_side = _side_by_side(out)
    unit = _rate_unit(preset)
    mark = " †" if side_by_side else ""
    speeds = f"train {unit}{mark} | inference {unit}{mark}"
    header = (
        "| mechanism | test acc, final model (mean ± std over seeds) | per seed | test acc, best-val model | "
        f"val acc | {speeds} | peak MiB | wall min / run | runs |"
        if tested
        else "| mechanism | final val acc (mean ± std over seeds) | per seed | s / epoch | "
        + (f"{speeds} | " if side_by_side else "")
        + "peak MiB | wall min / run | runs |"
    )
    lines = [
        f"`{command}` ({', '.join(f'{key}={value}' for key, value in preset.items() if key not in NOT_OPTIONS)})",
        "",
        header,
        "|---" * header.count(" | ") + "|---|",
    ]
    summary = []
    for mechanism in dict.fromkeys(row["mechanism"] for row in rows):
        runs = sorted((row for row in rows if row["mechanism"] == mechanism), key=lambda row: row["seed"])
        accuracies = [row[measure] for row in runs]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        memory = max(row["peak_mib"] for row in runs)
        speed = statistics.median(row.get("infer_images_per_s", row.get("train_images_per_s", 0.0)) for row in runs)
        train_speed = statistics.median(row.get("train_images_per_s", 0.0) for row in runs)
        if mechanism in side_by_side:
            train_speed, speed = (
                side_by_side[mechanism]["train_images_per_s"],
                side_by_side[mechanism]["infer_images_per_s"],
            )
        summary.append((mechanism, statistics.mean(accuracies), spread, speed, train_speed))
        per_seed = ", ".join(f"{100 * accuracy:.1f}" for accuracy in accuracies)
        cells = [mechanism, f"{100 * statistics.mean(accuracies):.1f} ± {100 * spread:.1f}", per_seed]
        if tested:
            cells += [
                f"{100 * statistics.mean(row['best_val_model_test_acc'] for row in runs):.1f}",
                f"{100 * statistics.mean(row['val_acc'] for row in runs):.1f}",
                f"{train_speed:.0f}",
                f"{speed:.0f}",
            ]
        else:
            cells.append(f"{statistics.median(row['seconds_per_epoch'] for row in runs):.1f}")
            if side_by_side:
                cells += [f"{train_speed:.0f}", f"{speed:.0f}"]
        wall = ", ".join(f"{row['wall_seconds'] / 60:.1f}" for row in runs)
        lines.append("| " + " | ".join([*cells, f"{memory:.0f}", wall, str(len(runs))]) + " |")
    if side_by_side:
        some = next(iter(side_by_side.values()))
        lines += [
            "",
            f"† measured side by side (`--throughput`): one process, {some['threads']:.0f} threads, one batch of "
            f"{some['batch_size']:.0f} training images, every mechanism in turn for {some['rounds']:.0f} rounds, "
            "medians (each round's spread about them in throughput.csv); a train step is forward, backward and "
            "AdamW. Each run's own figures, measured during its training, are in runs.csv.",
        ]
    if preset.get("published"):
        published = "; ".join(f"{name} {value:.2f}%" for name, value in preset["published"].items())
        lines += ["", f"Published, for comparison: {published}."]
    lines += ["", "Mechanisms (`elfatt_lab.attention.MECHANISMS`):", ""]
    lines += [f"- `{name}`: {MECHANISM_REGISTRY[name].summary}" for name, *_ in summary if name in MECHANISM_REGISTRY]
    atomic_write_text("\n".join(lines) + "\n", out / "summary.md")
    title = f"{task}: same model, different attention ({seeds_label(rows)})"
    _plot(rows, [entry[:3] for entry in summary], out, title, measure)
    if tested or side_by_side:
        accuracy = "test accuracy" if tested else "final validation accuracy"
        _plot_frontier(summary, out, title, bool(side_by_side), unit, accuracy)


def _side_by_side(out: Path) -> dict[str, dict[str, float]]:
    """``throughput.csv`` of ``out`` by mechanism (its numbers; the spreads are text), when ``--throughput`` wrote
    one."""
    path = out / "throughput.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {
            row["mechanism"]: {
                key: float(value) for key, value in row.items() if key != "mechanism" and not key.endswith("_pct")
            }
            for row in csv.DictReader(handle)
        }


def _plot_frontier(
    summary: list[tuple[str, float, float, float, float]],
    out: Path,
    title: str,
    side_by_side: bool,
    unit: str,
    accuracy: str,
) -> None:
    """``accuracy_vs_throughput.png``: accuracy (mean, spread over seeds) against training and against inference
    throughput, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    measured = "side by side in one process" if side_by_side else "each run's own process"
    for axes, column, label in ((panels[0], 4, "training"), (panels[1], 3, "inference")):
        for index, (name, mean, spread, *speeds) in enumerate(summary):
            speed = speeds[column - 3]
            axes.errorbar(speed, 100 * mean, yerr=100 * spread, fmt="o", capsize=4, color=f"C{index}", label=name)
            axes.annotate(name, (speed, 100 * mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
        axes.set_xscale("log")
        axes.set_xlabel(f"{label} {unit} (log scale; {measured})")
        axes.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel(f"{accuracy} (%)")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_save_figure(figure, out / "accuracy_vs_throughput.png", dpi=100)
    plt.close(figure)


def _plot(rows: list[dict], summary: list[tuple[str, float, float]], out: Path, title: str, measure: str) -> None:
    """``accuracy.png``: final accuracy per mechanism (mean and spread), and every run's validation curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [name for name, _, _ in summary]
    colours = {name: f"C{index}" for index, name in enumerate(names)}
    bars.bar(names, [100 * mean for _, mean, _ in summary], yerr=[100 * std for _, _, std in summary], capsize=4,
             color=[colours[name] for name in names])  # fmt: skip
    bars.set_ylabel("test accuracy, final model (%)" if measure == "test_acc" else "final validation accuracy (%)")
    bars.grid(True, axis="y", alpha=0.3)
    bars.tick_params(axis="x", labelrotation=30)
    for label in bars.get_xticklabels():
        label.set_horizontalalignment("right")
    labelled = set()
    for row in rows:
        with (_run_dir(out, row["mechanism"], row["seed"]) / "log.csv").open(newline="") as handle:
            history = list(csv.DictReader(handle))
        label = None if row["mechanism"] in labelled else row["mechanism"]
        labelled.add(row["mechanism"])
        curves.plot([int(epoch["epoch"]) for epoch in history], [100 * float(epoch["val_acc"]) for epoch in history],
                    color=colours[row["mechanism"]], marker=".", alpha=0.8, label=label)  # fmt: skip
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation accuracy (%)")
    curves.grid(True, alpha=0.3)
    curves.legend()
    figure.suptitle(title)
    figure.tight_layout()
    atomic_save_figure(figure, out / "accuracy.png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
