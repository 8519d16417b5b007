"""Registration with timm (explicit: ``import elfatt`` does not import timm), the core without timm, and the configs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from model_helpers import meta_device  # noqa: F401

import elfatt.models as models

VARIANTS = [
    f"{family}_elfatt_{size}"
    for family in ("cswin", "swin")
    for size in ("tiny_224", "small_224", "base_224", "base_384")
] + [f"vit_elfatt_{size}_patch16_224" for size in ("tiny", "small", "base")]
VARIANTS += ["swin_elfatt_tiny_hr", "swin_elfatt_base_hr"]
CFG_KEYS = {"url", "num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std"}
CFG_KEYS |= {"first_conv", "classifier", "license", "architecture"}


def test_variants_are_timm_models():
    assert sorted(timm.list_models("*_elfatt_*")) == sorted(VARIANTS)
    assert models.list_models is timm.list_models and models.create_model is timm.create_model
    assert all(timm.is_model(name) for name in VARIANTS)
    assert {timm.models.get_arch_name(name) for name in VARIANTS} == set(VARIANTS)


# The ViT variants' configs (no final map, DeiT's crop, prefix-token stem) are tested in test_vit_elfatt.py.
@pytest.mark.parametrize("name", [name for name in VARIANTS if not name.startswith("vit")])
def test_default_cfg(name, meta_device):  # noqa: F811
    model = models.create_model(name)
    assert next(model.parameters()).device.type == "meta"
    cfg = model.pretrained_cfg
    assert CFG_KEYS <= cfg.keys()
    assert model.default_cfg is cfg and cfg["architecture"] == name
    side = 384 if name.endswith("384") else 512 if name.endswith("_hr") else 224
    assert cfg["input_size"] == (3, side, side)
    assert cfg["pool_size"] == (side // 32, side // 32)
    assert cfg["crop_pct"] == (1.0 if side > 224 else 0.9)
    assert model.img_size == (side, side)
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]).out_features == cfg["num_classes"] == model.num_classes == 1000
    assert model.num_features == model.feature_info[-1]["num_chs"]
    assert model.group_matcher()["stem"] == r"^patch_embed" and model.no_weight_decay() == set()


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("how", ["import elfatt.models", "elfatt.register_models()"])
def test_registration_is_explicit_and_import_elfatt_alone_does_not_import_timm(how):
    out = _run_python(
        f"""
        import sys
        import elfatt
        print("timm imported by elfatt:", "timm" in sys.modules)
        import timm
        print("registered by import elfatt:", timm.is_model("cswin_elfatt_tiny_224"))
        {"import elfatt.models" if how.startswith("import") else "print('names', len(elfatt.register_models()))"}
        import torch
        model = timm.create_model("cswin_elfatt_tiny_224", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4),
                                  num_classes=3)
        print(type(model).__name__, tuple(model(torch.randn(1, 3, 64, 48)).shape))
        """
    )
    assert "timm imported by elfatt: False" in out and "registered by import elfatt: False" in out
    assert "CSWinELFATT (1, 3)" in out
    if how.startswith("elfatt"):
        assert f"names {len(VARIANTS)}" in out


def test_core_works_without_timm():
    """The op and the module with timm unimportable; the models then say what is missing."""
    out = _run_python(
        """
        import sys
        sys.modules["timm"] = None
        import torch
        import elfatt
        layer = elfatt.ELFATTAttention(16, 2, block=(2, 3))
        print("module", tuple(layer(torch.randn(2, 5 * 7, 16), (5, 7)).shape))
        q, k, v = torch.randn(3, 1, 12, 2, 8).unbind(0)
        print("op", tuple(elfatt.elfatt(q, k, v, (3, 4), block=2).shape))
        try:
            import elfatt.models
        except ImportError as error:
            print("models:", error)
        """
    )
    assert (
        "module (2, 35, 16)" in out
        and "op (1, 12, 2, 8)" in out
        and "models: elfatt.models needs timm: pip install 'elfatt[models]'" in out
    )
