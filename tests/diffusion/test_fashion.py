"""The diffusion model trained here and its evaluation, on small idx files and a handful of steps and samples."""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("diffusers")

from fashion_files import write_fashion_files  # noqa: E402
from unets import record_op_calls  # noqa: E402

from elfatt.diffusion import apply_patch  # noqa: E402
from elfatt_lab.diffusion.fashion.__main__ import main  # noqa: E402
from elfatt_lab.diffusion.fashion.evaluate import EvaluationConfig, evaluate, load_diffusion_model  # noqa: E402
from elfatt_lab.diffusion.fashion.model import (  # noqa: E402
    ClassConditionalDiT,
    ClassConditionalUNet,
    generate,
    to_model_range,
)
from elfatt_lab.diffusion.fashion.quality import feature_statistics, frechet_distance  # noqa: E402
from elfatt_lab.diffusion.fashion.train import (  # noqa: E402
    ClassifierTrainConfig,
    DiffusionTrainConfig,
    train_classifier,
    train_diffusion,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    write_fashion_files(folder, train_count=40, test_count=20)
    return folder


# Narrower models of the same layouts, so that training steps take milliseconds.
NARROW = dict(block_out_channels=(16, 16, 16), norm_num_groups=8, attention_head_dim=2, cross_attention_dim=16)
NARROW_DIT = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2)


@pytest.fixture
def narrow_unet(monkeypatch):
    import elfatt_lab.diffusion.fashion.model as model_module

    monkeypatch.setattr(model_module, "UNET_CONFIG", dict(model_module.UNET_CONFIG, **NARROW))
    monkeypatch.setattr(model_module, "DIT_CONFIG", dict(model_module.DIT_CONFIG, **NARROW_DIT))


def _weights(folder, generator="unet"):
    from safetensors.torch import load_file

    return load_file(folder / f"{generator}.safetensors")


def _same(first, second):
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("generator", ["unet", "dit"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one_of_either_generator(
    data, tmp_path, narrow_unet, generator
):
    options = dict(generator=generator, batch_size=4, warmup_steps=2, checkpoint_every=2, data_dir=data, progress=False)
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "whole", **options))
    train_diffusion(DiffusionTrainConfig(steps=2, out=tmp_path / "parts", **options))
    halfway = _weights(tmp_path / "parts", generator)
    log = train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "parts", resume=True, **options))
    assert _same(_weights(tmp_path / "whole", generator), _weights(tmp_path / "parts", generator))
    assert not _same(halfway, _weights(tmp_path / "parts", generator)), "the checkpoint's weights were not written"
    assert [row["step"] for row in log] == [2, 4]


def test_a_run_can_start_from_a_trained_generator_of_its_kind(data, tmp_path, narrow_unet):
    options = dict(batch_size=4, warmup_steps=2, checkpoint_every=2, data_dir=data, progress=False)
    train_diffusion(DiffusionTrainConfig(steps=2, out=tmp_path / "first", **options))
    first = tmp_path / "first" / "unet.safetensors"
    train_diffusion(DiffusionTrainConfig(steps=2, out=tmp_path / "on", init_from=first, lr=1e-9, **options))
    train_diffusion(DiffusionTrainConfig(steps=2, out=tmp_path / "afresh", lr=1e-9, seed=1, **options))
    started, trained = _weights(tmp_path / "on"), _weights(tmp_path / "first")
    # At a negligible learning rate the run's EMA stays where it began: the first run's weights.
    assert all(torch.allclose(started[key], trained[key], atol=1e-6) for key in trained)
    assert not all(torch.allclose(_weights(tmp_path / "afresh")[key], trained[key], atol=1e-6) for key in trained)
    description = json.loads((tmp_path / "on" / "unet.json").read_text())
    assert description["trained"]["initialized_from"] == dict(path=str(first), trained=json.loads(
        first.with_suffix(".json").read_text())["trained"])  # fmt: skip
    with pytest.raises(ValueError, match="--init-from .*: it holds a unet, not a dit"):
        train_diffusion(DiffusionTrainConfig(steps=2, generator="dit", out=tmp_path / "x", init_from=first, **options))
    with pytest.raises(ValueError, match="--init-from .*missing.safetensors: .*No such file"):
        train_diffusion(DiffusionTrainConfig(steps=2, out=tmp_path / "y", init_from=tmp_path / "missing.safetensors",
                                             **options))  # fmt: skip


def test_the_resume_checks_refuse_in_one_line(data, tmp_path, narrow_unet):
    options = dict(batch_size=4, warmup_steps=2, checkpoint_every=2, data_dir=data, progress=False)
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "whole", **options))
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "parts", **options))
    assert (tmp_path / "parts" / "diffusion_loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="has trained 4 steps already, --steps is 4: pass more"):
        train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "parts", resume=True, **options))
    with pytest.raises(ValueError, match="saved by a run with lr=0.0005, but this command has lr=0.001"):
        train_diffusion(DiffusionTrainConfig(steps=6, lr=1e-3, out=tmp_path / "parts", resume=True, **options))
    with pytest.raises(ValueError, match="there is no .*last.pt; start without --resume"):
        train_diffusion(DiffusionTrainConfig(steps=6, out=tmp_path / "none", resume=True, **options))
    (tmp_path / "parts" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*; start afresh without --resume"):
        train_diffusion(DiffusionTrainConfig(steps=6, out=tmp_path / "parts", resume=True, **options))
    state = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(7, 3)
    state["step"] = 2
    torch.save(state, tmp_path / "parts" / "last.pt")
    with pytest.raises(ValueError, match="does not fit this model .*; start afresh without --resume"):
        train_diffusion(DiffusionTrainConfig(steps=6, out=tmp_path / "parts", resume=True, **options))
    marker = tmp_path / "ran"
    torch.save({"config": _Payload(marker), "step": 2}, tmp_path / "parts" / "last.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint .*; start afresh without --resume") as refusal:
        train_diffusion(DiffusionTrainConfig(steps=6, out=tmp_path / "parts", resume=True, **options))
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert "\n" not in str(refusal.value)


def test_a_resumed_run_may_end_with_a_learning_rate_decay(data, tmp_path, narrow_unet):
    from elfatt_lab.diffusion.fashion.train import _learning_rate_factor

    factors = [_learning_rate_factor(step, 2, 10, 4) for step in range(10)]
    assert factors[:6] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0] and factors[6:] == sorted(factors[6:], reverse=True)
    assert 0 < factors[-1] < 0.2 and factors[8] == pytest.approx(0.5)
    options = dict(batch_size=4, warmup_steps=2, checkpoint_every=2, data_dir=data, progress=False)
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "run", **options))
    log = train_diffusion(DiffusionTrainConfig(steps=8, decay_steps=4, out=tmp_path / "run", resume=True, **options))
    assert [row["lr"] for row in log] == [5e-4, 0.0]  # at step 4 the constant rate, after step 8 the decay's end
    with pytest.raises(ValueError, match=r"decay_steps must lie in \[0, steps = 8\], got 9"):
        train_diffusion(DiffusionTrainConfig(steps=8, decay_steps=9, out=tmp_path / "run", **options))


class _Payload:
    """Pickles to a call of ``exec``: loading it with ``weights_only=False`` would create ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_samples_depend_on_their_seed_not_on_the_batching(narrow_unet):
    torch.manual_seed(0)
    model = ClassConditionalUNet().eval()
    labels, seeds = [3, 1, 4, 1, 5], [10, 11, 12, 13, 14]
    together = generate(model, labels, seeds, steps=2, batch_size=5)
    apart = generate(model, labels, seeds, steps=2, batch_size=2)
    assert together.shape == (5, 1, 32, 32) and together.abs().max() <= 1
    # DDIM's first step from t=999 divides by sqrt(alpha_bar) ~ 1e-2, so float32 differences between batchings grow
    # to ~1e-3 with untrained weights; other seeds differ by ~1.
    assert (together - apart).abs().max() < 1e-2
    alone = generate(model, labels[2:3], seeds[2:3], steps=2)
    assert (alone[0] - together[2]).abs().max() < 1e-2 and (together[2] - together[3]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="2 labels but 1 seeds"):
        generate(model, [0, 1], [0], steps=1)


def test_the_default_patch_covers_the_three_self_attention_layers_at_1024_tokens(monkeypatch):
    torch.manual_seed(0)
    model = ClassConditionalUNet().eval()
    seen = record_op_calls(monkeypatch, "global")
    apply_patch(model, ratio=0.0)
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32), torch.tensor(10), torch.tensor([0, 10]))
    # One down and two up layers at 32x32, 2 heads split 1 global + 1 block; none at 16x16, no cross-attention.
    assert seen == [torch.Size([2, 1024, 1, 16])] * 3


def test_the_dit_is_patched_in_all_its_blocks_and_draws_no_labels_of_its_own(monkeypatch):
    torch.manual_seed(0)
    model = ClassConditionalDiT()
    x, labels = torch.randn(2, 1, 32, 32), torch.tensor([3, 10])
    with torch.no_grad():
        # Training mode: the label embeddings' own dropout would replace labels at random (the run does it, seeded).
        assert torch.equal(model.train()(x, 500, labels), model(x, torch.tensor([500, 500]), labels))
    seen = record_op_calls(monkeypatch, "global")
    apply_patch(model.eval(), ratio=0.0)
    with torch.no_grad():
        model(x, torch.tensor(10), labels)
    # 16x16 tokens of 2x2 pixels in each of the 6 blocks, 4 heads split 2 global + 2 block.
    assert seen == [torch.Size([2, 256, 2, 32])] * 6


def test_frechet_distance_matches_scipy_and_the_closed_form():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator).double()
    b = torch.randn(200, 6, generator=generator, dtype=torch.float64) + 0.5
    (m1, s1), (m2, s2) = feature_statistics(a), feature_statistics(b)
    root = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = ((m1 - m2) ** 2).sum().item() + (s1.trace() + s2.trace()).item() - 2 * root.trace()
    assert frechet_distance((m1, s1), (m2, s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance((m1, s1), (m1, s1)) == pytest.approx(0.0, abs=1e-9)
    # Diagonal covariances: |m1 - m2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    first, second = torch.tensor([1.0, 4.0, 9.0]).double(), torch.tensor([4.0, 1.0, 9.0]).double()
    shift = torch.tensor([1.0, 0.0, 2.0]).double()
    closed = 5.0 + 1.0 + 1.0 + 0.0
    assert frechet_distance((shift, torch.diag(first)), (torch.zeros(3).double(), torch.diag(second))) == pytest.approx(
        closed
    )
    with pytest.raises(ValueError, match="need features"):
        feature_statistics(torch.zeros(1, 3))


def test_images_enter_the_model_padded_in_minus_one_to_one():
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat(28 * 14).reshape(1, 28, 28)
    x = to_model_range(images)
    assert x.shape == (1, 1, 32, 32) and x.min() == -1 and x.max() == 1
    assert (x[..., :2, :] == -1).all() and (x[..., 2:30, 2:30] == images.float().div(127.5).sub(1)).all()


def test_evaluation_end_to_end_writes_the_table_and_the_grid(data, tmp_path, narrow_unet):
    options = dict(data_dir=data, out=tmp_path, progress=False)
    train_diffusion(DiffusionTrainConfig(steps=2, batch_size=4, **options))
    judge = train_classifier(ClassifierTrainConfig(epochs=1, batch_size=16, **options))
    options["judge_dir"] = tmp_path
    assert 0 <= judge["test_accuracy"] <= 1 and judge["test_images"] == 20
    settings = ["elfatt, merge 0.5", "tome (merge only) 0.5"]
    config = EvaluationConfig(
        model_dir=tmp_path, samples=6, steps=2, batch_size=3, timing_rounds=1, settings=settings, **options
    )
    rows = evaluate(config)
    assert [row["setting"] for row in rows] == ["real training images (6)", "original", *settings]
    original = rows[1]
    assert original["pixel_difference"] == 0 and original["step_speedup"] == 1
    assert all(row["frechet_distance"] >= 0 and 0 <= row["class_accuracy"] <= 1 for row in rows)
    assert all(row["pixel_difference"] > 0 and row["self_attention_ms"] > 0 for row in rows[2:])
    with (tmp_path / "quality.csv").open() as handle:
        assert [row["setting"] for row in csv.DictReader(handle)] == [row["setting"] for row in rows]
    summary = (tmp_path / "quality.md").read_text()
    assert (
        "not Inception FID" in summary
        and "- tome (merge only) 0.5: apply_patch(ratio=0.5, attention='merge-only')" in summary
    )
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert torch.equal(
        next(load_diffusion_model(tmp_path)[0].parameters()), next(load_diffusion_model(tmp_path)[0].parameters())
    )


def test_the_dit_is_evaluated_with_the_seed_to_seed_spread_of_the_original(data, tmp_path, narrow_unet):
    options = dict(data_dir=data, out=tmp_path, progress=False)
    train_diffusion(DiffusionTrainConfig(generator="dit", steps=2, batch_size=4, **options))
    train_classifier(ClassifierTrainConfig(epochs=1, batch_size=16, **options))
    settings = ["original, other seeds", "elfatt, block 8", "elfatt, steps t < 500 only"]
    config = EvaluationConfig(
        generator="dit", judge_dir=tmp_path, samples=4, steps=2, batch_size=2, timing_rounds=1, settings=settings,
        **options,
    )  # fmt: skip
    rows = evaluate(config)
    assert [row["setting"] for row in rows] == ["real training images (4)", "original", *settings]
    other = rows[2]
    assert "step_ms" not in other and "pixel_difference" not in other and other["frechet_distance"] > 0
    assert rows[3]["step_speedup"] > 0 and rows[3]["pixel_difference"] > 0
    # DDIM's 2 steps are t = 999 and 499: the second alone is patched, and the samples move
    assert 0 < rows[4]["pixel_difference"] and rows[4]["options"].endswith("timesteps=(0, 499))")
    summary = (tmp_path / "quality.md").read_text()
    assert summary.startswith("Generator: dit ") and "| original, other seeds | " in summary
    spread = abs(rows[2]["frechet_distance"] - rows[1]["frechet_distance"])
    assert f"seed-to-seed spread: Frechet distance {spread:.2f}" in summary
    change = rows[3]["frechet_distance"] - rows[1]["frechet_distance"]
    accuracy = rows[3]["class_accuracy"] - rows[1]["class_accuracy"]
    verdict = "yes" if abs(change) <= spread and abs(accuracy) <= 0.02 + 1e-9 else "no"
    assert f"- elfatt, block 8: {verdict} (Frechet distance {change:+.2f}, " in summary


def test_an_evaluation_cut_off_resumes_from_the_settings_it_generated(data, tmp_path, narrow_unet, monkeypatch):
    import elfatt_lab.diffusion.fashion.evaluate as evaluate_module

    options = dict(data_dir=data, out=tmp_path, progress=False)
    train_diffusion(DiffusionTrainConfig(steps=2, batch_size=4, **options))
    train_classifier(ClassifierTrainConfig(epochs=1, batch_size=16, **options))
    generated = []

    def counting_generate(*args, **kwargs):
        generated.append(kwargs["guidance"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate", counting_generate)
    settings = ["elfatt, merge 0.5"]
    config = dict(judge_dir=tmp_path, samples=4, steps=2, batch_size=2, timing_rounds=1, settings=settings, **options)
    first = evaluate(EvaluationConfig(**config))
    assert len(generated) == 2 and len(list((tmp_path / "generated").glob("*.safetensors"))) == 2
    again = evaluate(EvaluationConfig(**config))
    assert len(generated) == 2  # nothing generated again
    for before, after in zip(first, again, strict=True):
        assert after["frechet_distance"] == before["frechet_distance"]
        assert after.get("seconds_per_sample") == before.get("seconds_per_sample")
    evaluate(EvaluationConfig(**dict(config, guidance=1.5)))
    assert generated[2:] == [1.5, 1.5]  # another guidance: generated again, the files replaced
    (tmp_path / "generated" / "original.safetensors").write_bytes(b"not safetensors")
    evaluate(EvaluationConfig(**dict(config, guidance=1.5)))
    assert generated[4:] == [1.5]  # a damaged file is generated again
    import elfatt_lab.diffusion.fashion.generated as generated_module

    monkeypatch.setattr(generated_module, "_elfatt_source_digest", lambda: "elfatt changed")
    evaluate(EvaluationConfig(**dict(config, guidance=1.5)))
    assert generated[5:] == [1.5]  # elfatt's source changed: the patched setting again, not the original
    monkeypatch.undo()
    monkeypatch.setattr(evaluate_module, "generate", counting_generate)
    evaluate(EvaluationConfig(**dict(config, guidance=1.5)))
    assert generated[6:] == [1.5]
    weights = _weights(tmp_path)
    weights[next(iter(weights))] += 1
    from safetensors.torch import save_file

    save_file(weights, tmp_path / "unet.safetensors")
    evaluate(EvaluationConfig(**dict(config, guidance=1.5)))
    assert generated[7:] == [1.5, 1.5]  # other weights: generated again
    load = evaluate_module.load_diffusion_model

    def load_while_a_training_saves(*args):
        loaded = load(*args)
        save_file(_weights(tmp_path), tmp_path / "unet.safetensors", metadata={"step": "next"})
        return loaded

    monkeypatch.setattr(evaluate_module, "load_diffusion_model", load_while_a_training_saves)
    with pytest.raises(ValueError, match="unet.safetensors changed while it was read"):
        evaluate(EvaluationConfig(**config))


def test_a_setting_passes_within_the_seed_to_seed_spread_and_two_points_of_class_accuracy():
    from elfatt_lab.diffusion.fashion.evaluate import _within_spread

    def row(name, distance, accuracy, paired=True):
        extra = dict(pixel_difference=0.01) if paired else {}
        return dict(setting=name, frechet_distance=distance, class_accuracy=accuracy, **extra)

    rows = [
        row("real training images (500)", 0.3, 0.92, paired=False),
        row("original", 10.0, 0.70),
        row("original, other seeds", 11.5, 0.69, paired=False),
        row("close", 8.6, 0.72),  # -1.4 and +2 points: both bounds inclusive
        row("far", 11.6, 0.70),  # +1.6 > 1.5
        row("less accurate", 10.1, 0.67),  # -3 points
    ]
    lines = "\n".join(_within_spread(rows))
    assert "spread: Frechet distance 1.50 " in lines and "class accuracy 1.0 points" in lines
    assert "- close: yes (Frechet distance -1.40, class accuracy +2.0)" in lines
    assert "- far: no (Frechet distance +1.60, class accuracy +0.0)" in lines
    assert "- less accurate: no (Frechet distance +0.10, class accuracy -3.0)" in lines
    assert "- original:" not in lines and "- original, other seeds:" not in lines
    assert _within_spread([row for row in rows if row["setting"] != "original, other seeds"]) == []


def test_every_setting_saves_its_samples_under_a_name_of_its_own():
    from elfatt_lab.diffusion.fashion.evaluate import SETTINGS, _slug

    names = [_slug(setting.name) for setting in SETTINGS]
    assert len(set(names)) == len(names) and _slug("elfatt, steps t >= 500 only") == "elfatt--steps-t-ge-500-only"


def test_commands_refuse_what_they_cannot_do_in_one_line(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model-dir", str(tmp_path), "--out", str(tmp_path), "--data-dir", str(data)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("no unet in " + str(tmp_path) + " (unet.safetensors and unet.json); train it first")
    assert "\n" not in error
    with pytest.raises(SystemExit):
        main(["evaluate", "--settings", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--steps", "0"])
    assert "--steps: must be >= 1, got 0" in capsys.readouterr().err


def test_the_first_unets_description_still_builds_its_model_without_class_embeddings(narrow_unet):
    from elfatt_lab.diffusion.fashion.model import UNET_CONFIG, build_generator

    first = {key: value for key, value in UNET_CONFIG.items() if key != "num_class_embeds"}
    old = build_generator(dict(unet_config=first, num_classes=10))
    assert old.unet.class_embedding is None
    new = build_generator(dict(generator="unet", model_config=dict(UNET_CONFIG), num_classes=10))
    assert new.unet.class_embedding.num_embeddings == 11
    seen = []
    new.unet.class_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    with torch.no_grad():  # the class enters through the time embedding as well
        new(torch.randn(2, 1, 32, 32), 10, torch.tensor([1, 10]))
    assert seen == [[1, 10]]
    with pytest.raises(ValueError, match="unknown generator 'vae'"):
        build_generator(dict(generator="vae", model_config={}, num_classes=10))


def test_a_run_judges_its_samples_while_it_trains_and_a_resume_keeps_the_curve(data, tmp_path, narrow_unet):
    judge_dir = tmp_path / "judge"
    train_classifier(ClassifierTrainConfig(epochs=1, batch_size=16, data_dir=data, out=judge_dir, progress=False))
    options = dict(batch_size=4, warmup_steps=2, checkpoint_every=2, judge_every=2, judge_samples=3,
                   judge_dir=judge_dir, data_dir=data, progress=False)  # fmt: skip
    train_diffusion(DiffusionTrainConfig(steps=2, out=tmp_path / "run", **options))
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "run", resume=True, judge_guidance=1.5, **options))
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "whole", **options))
    with (tmp_path / "run" / "judge_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["2", "4"] and all(0 <= float(row["class_accuracy"]) <= 1 for row in rows)
    assert [row["guidance"] for row in rows] == ["3.0", "1.5"]  # the resumed run judged at the guidance it was given
    # Judging draws nothing from the training's random streams: the judged run ends where an unjudged one does.
    assert _same(_weights(tmp_path / "run"), _weights(tmp_path / "whole"))
    plain = dict(options, judge_every=0)
    train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "unjudged", **plain))
    assert _same(_weights(tmp_path / "unjudged"), _weights(tmp_path / "whole"))
    description = json.loads((tmp_path / "run" / "unet.json").read_text())
    assert description["trained"]["class_accuracy"] == float(rows[-1]["class_accuracy"])
    with pytest.raises(ValueError, match="judge_every must be 0 or a multiple of checkpoint_every"):
        train_diffusion(DiffusionTrainConfig(steps=4, out=tmp_path / "odd", **dict(options, judge_every=3)))
