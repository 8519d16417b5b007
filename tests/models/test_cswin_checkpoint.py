"""checkpoint_filter_fn: a state dict in the official CSWin code's names maps onto CSWin-ELFATT tensor for tensor."""

from __future__ import annotations

import pytest
import torch

import elfatt.models as models
from elfatt.models import checkpoint_filter_fn

EMBED, DEPTHS, HEADS, CLASSES = 16, (1, 2, 1, 1), (2, 2, 4, 4), 7


def official_cswin_state_dict(generator: torch.Generator, num_classes: int = CLASSES) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as microsoft/CSWin-Transformer's CSWinTransformer (qkv_bias=True).

    Stages 1-3 have two stripe groups (``attns.0``, ``attns.1``, each a LePE conv over half the channels); the
    last stage has one group over all channels.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "stage1_conv_embed.0.weight": (EMBED, 3, 7, 7),
        "stage1_conv_embed.0.bias": (EMBED,),
        "stage1_conv_embed.2.weight": (EMBED,),
        "stage1_conv_embed.2.bias": (EMBED,),
    }
    for stage, depth in enumerate(DEPTHS, start=1):
        dim = EMBED * 2 ** (stage - 1)
        for j in range(depth):
            prefix = f"stage{stage}.{j}."
            shapes |= {
                prefix + "norm1.weight": (dim,),
                prefix + "norm1.bias": (dim,),
                prefix + "qkv.weight": (3 * dim, dim),
                prefix + "qkv.bias": (3 * dim,),
                prefix + "proj.weight": (dim, dim),
                prefix + "proj.bias": (dim,),
                prefix + "norm2.weight": (dim,),
                prefix + "norm2.bias": (dim,),
                prefix + "mlp.fc1.weight": (4 * dim, dim),
                prefix + "mlp.fc1.bias": (4 * dim,),
                prefix + "mlp.fc2.weight": (dim, 4 * dim),
                prefix + "mlp.fc2.bias": (dim,),
            }
            groups = 1 if stage == len(DEPTHS) else 2
            for group in range(groups):
                shapes[prefix + f"attns.{group}.get_v.weight"] = (dim // groups, 1, 3, 3)
                shapes[prefix + f"attns.{group}.get_v.bias"] = (dim // groups,)
        if stage < len(DEPTHS):
            shapes |= {
                f"merge{stage}.conv.weight": (2 * dim, dim, 3, 3),
                f"merge{stage}.conv.bias": (2 * dim,),
                f"merge{stage}.norm.weight": (2 * dim,),
                f"merge{stage}.norm.bias": (2 * dim,),
            }
    final = EMBED * 2 ** (len(DEPTHS) - 1)
    shapes |= {"norm.weight": (final,), "norm.bias": (final,)}
    shapes |= {"head.weight": (num_classes, final), "head.bias": (num_classes,)}
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _model(**kwargs) -> torch.nn.Module:
    args = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, num_classes=CLASSES)
    return models.create_model("cswin_elfatt_tiny_224", **{**args, **kwargs})


def test_official_names_map_tensor_for_tensor(generator):
    official = official_cswin_state_dict(generator)
    model = _model()
    model.load_state_dict(checkpoint_filter_fn(official, model))
    ours = model.state_dict()
    assert len(ours) == len(official) + 2, "the last stage's single LePE conv becomes two"
    pairs = {
        "patch_embed.proj.weight": "stage1_conv_embed.0.weight",
        "patch_embed.norm.bias": "stage1_conv_embed.2.bias",
        "stages.1.downsample.conv.weight": "merge1.conv.weight",
        "stages.3.downsample.norm.weight": "merge3.norm.weight",
        "stages.1.blocks.1.attn.qkv.weight": "stage2.1.qkv.weight",
        "stages.2.blocks.0.attn.proj.bias": "stage3.0.proj.bias",
        "stages.0.blocks.0.mlp.fc1.weight": "stage1.0.mlp.fc1.weight",
        "stages.0.blocks.0.norm2.weight": "stage1.0.norm2.weight",
        # The global heads take the vertical-stripe group's place, the block heads keep the horizontal stripes.
        "stages.0.blocks.0.attn.global_lepe.conv.weight": "stage1.0.attns.0.get_v.weight",
        "stages.0.blocks.0.attn.block_lepe.conv.bias": "stage1.0.attns.1.get_v.bias",
        "norm.weight": "norm.weight",
        "head.weight": "head.weight",
    }
    for ours_name, official_name in pairs.items():
        torch.testing.assert_close(ours[ours_name], official[official_name], rtol=0, atol=0)
    for kind in ("weight", "bias"):
        split = [ours[f"stages.3.blocks.0.attn.{part}_lepe.conv.{kind}"] for part in ("global", "block")]
        torch.testing.assert_close(torch.cat(split), official[f"stage4.0.attns.0.get_v.{kind}"], rtol=0, atol=0)


def test_wrapped_checkpoints_and_own_names(generator):
    official = official_cswin_state_dict(generator)
    ema = {k: v + 1 for k, v in official.items()}
    wrapped = {"state_dict": {f"module.{k}": v for k, v in official.items()}, "state_dict_ema": ema, "epoch": 299}
    model = _model()
    mapped = checkpoint_filter_fn(wrapped, model)
    torch.testing.assert_close(mapped["head.weight"], official["head.weight"])
    mapped_ema = checkpoint_filter_fn(wrapped, model, use_ema=True)
    torch.testing.assert_close(mapped_ema["head.weight"], ema["head.weight"])
    model.load_state_dict(mapped)
    same = checkpoint_filter_fn(model.state_dict(), model)
    assert same.keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="use_ema"):
        checkpoint_filter_fn(official, model, use_ema=True)


def test_mismatches_are_reported(generator):
    official = official_cswin_state_dict(generator)
    model = _model()
    extra = official | {"stage1.0.attns.0.relative_position_bias_table": torch.randn(3, generator=generator)}
    with pytest.raises(ValueError, match=r"1 unexpected.*relative_position_bias_table"):
        checkpoint_filter_fn(extra, model)
    missing = {k: v for k, v in official.items() if not k.startswith("stage3.")}
    with pytest.raises(ValueError, match=r"missing: stages\.2\.blocks\.0\."):
        checkpoint_filter_fn(missing, model)
    deeper = _model(depths=(1, 2, 2, 1))
    with pytest.raises(ValueError, match=r"missing: stages\.2\.blocks\.1\."):
        checkpoint_filter_fn(official, deeper)
    other_head = official_cswin_state_dict(generator, num_classes=3)
    with pytest.raises(ValueError, match=r"mismatched: head\.weight: checkpoint \(3, 128\) vs model \(7, 128\)"):
        checkpoint_filter_fn(other_head, model)
    with pytest.warns(UserWarning, match="missing"):
        partial = checkpoint_filter_fn(missing, model, strict=False)
    assert not any(k.startswith("stages.2.blocks") for k in partial)
    assert "stages.2.downsample.conv.weight" in partial


def test_pretrained_from_a_local_file(tmp_path, generator):
    official = official_cswin_state_dict(generator)
    path = tmp_path / "cswin_elfatt_tiny_224.pth"
    torch.save({"model": official}, path)
    model = _model(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=CLASSES))
    torch.testing.assert_close(model.state_dict()["stages.2.blocks.0.attn.qkv.weight"], official["stage3.0.qkv.weight"])
    assert model.pretrained_cfg["file"] == str(path)
    # Another class count: timm's loader drops the checkpoint's classifier and keeps a fresh one.
    fresh_head = _model(
        num_classes=5, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=CLASSES)
    )
    assert fresh_head.head.weight.shape == (5, 128)
    torch.testing.assert_close(fresh_head.norm.weight, official["norm.weight"])
    # One input channel: timm's loader sums the stem's RGB kernels.
    grey = _model(in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=CLASSES))
    torch.testing.assert_close(
        grey.patch_embed.proj.weight, official["stage1_conv_embed.0.weight"].sum(1, keepdim=True)
    )
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        _model(pretrained=True)
