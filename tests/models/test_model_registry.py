"""The registry without timm, the guarded timm registration, and the variants' pretrained configs."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from model_helpers import meta_device  # noqa: F401

import elfatt.models as models
from elfatt.models import _registry

VARIANTS = [
    f"{family}_elfatt_{size}"
    for family in ("cswin", "swin")
    for size in ("tiny_224", "small_224", "base_224", "base_384")
] + [f"vit_elfatt_{size}_patch16_224" for size in ("tiny", "small", "base")]
CFG_KEYS = {"url", "num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std"}
CFG_KEYS |= {"first_conv", "classifier", "license", "architecture"}


def test_list_and_create_without_timm():
    assert models.list_models() == sorted(VARIANTS)
    assert models.list_models("swin_*") == sorted(v for v in VARIANTS if v.startswith("swin_"))
    assert models.is_model("cswin_elfatt_tiny_224") and not models.is_model("cswin_tiny_224")
    with pytest.raises(ValueError, match="did you mean cswin_elfatt_tiny_224"):
        models.create_model("cswin_elfat_tiny_224")


# The ViT variants' configs (no final map, DeiT's crop, prefix-token stem) are tested in test_vit_elfatt.py.
@pytest.mark.parametrize("name", [name for name in VARIANTS if not name.startswith("vit")])
def test_default_cfg(name, meta_device):  # noqa: F811
    model = models.create_model(name)
    assert next(model.parameters()).device.type == "meta"
    cfg = model.pretrained_cfg
    assert CFG_KEYS <= cfg.keys()
    assert model.default_cfg is cfg and cfg["architecture"] == name
    side = 384 if name.endswith("384") else 224
    assert cfg["input_size"] == (3, side, side)
    assert cfg["pool_size"] == (side // 32, side // 32)
    assert cfg["crop_pct"] == (1.0 if side == 384 else 0.9)
    assert model.img_size == (side, side)
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]).out_features == cfg["num_classes"] == model.num_classes == 1000
    assert model.num_features == model.feature_info[-1]["num_chs"]
    assert model.group_matcher()["stem"] == r"^patch_embed" and model.no_weight_decay() == set()


def test_registration_is_handed_to_timm_when_it_imports(monkeypatch):
    handed = []
    monkeypatch.setattr(_registry, "_model_entrypoints", dict(_registry._model_entrypoints))
    monkeypatch.setattr(_registry, "_timm_register_model", lambda fn: handed.append(fn) or fn)

    def toy_elfatt_model(pretrained: bool = False, **kwargs):
        return torch.nn.Identity()

    assert _registry.register_model(toy_elfatt_model) is toy_elfatt_model
    assert handed == [toy_elfatt_model] and models.is_model("toy_elfatt_model")

    def toy_elfatt_model(pretrained: bool = False, **kwargs):  # noqa: F811
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        _registry.register_model(toy_elfatt_model)


def test_a_broken_timm_is_ignored(monkeypatch):
    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))
    monkeypatch.setitem(sys.modules, "timm.models", Broken("timm.models"))
    assert _registry._find_timm_register() is None
    monkeypatch.setitem(sys.modules, "timm.models", None)
    assert _registry._find_timm_register() is None


def test_timm_create_model():
    timm = pytest.importorskip("timm")
    assert models.timm_available()
    assert set(VARIANTS) <= set(timm.list_models("*elfatt*"))
    small = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), num_classes=5)
    model = timm.create_model("cswin_elfatt_tiny_224", **small).eval()
    assert isinstance(model, models.CSWinELFATT)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    backbone = timm.create_model("swin_elfatt_tiny_224", features_only=True, out_indices=(1, 3), **small)
    assert [m.shape[1] for m in backbone(torch.randn(1, 3, 64, 64))] == [32, 128]
