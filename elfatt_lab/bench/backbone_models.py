"""Whole backbones in the model-level benchmark: ELFATT's registered variants and, when timm imports, timm's own."""

from __future__ import annotations

from torch import nn

__all__ = ["TIMM_PREFIX", "PATCHED_PREFIX", "default_backbones", "check_backbones", "build_backbone", "timm_imports"]

TIMM_PREFIX = "timm:"
# timm's own ViT with its attention swapped for ELFATT by patch_timm_vit
PATCHED_PREFIX = "timm+elfatt:"
ELFATT_BACKBONES = ("swin_elfatt_tiny_224", "swin_elfatt_tiny_hr", "cswin_elfatt_tiny_224")
TIMM_BACKBONES = ("timm:swin_tiny_patch4_window7_224", "timm:vit_small_patch16_224")


def timm_imports() -> bool:
    """Whether timm can be imported (a timm whose torchvision does not load raises RuntimeError, not ImportError)."""
    try:
        import timm  # noqa: F401
    except Exception:
        return False
    return True


def default_backbones() -> tuple[str, ...]:
    """ELFATT's tiny Swin (paper blocks and fixed 8x8 windows) and CSWin, plus timm's Swin-T and ViT-S where timm
    imports."""
    return ELFATT_BACKBONES + (TIMM_BACKBONES if timm_imports() else ())


def check_backbones(names: tuple[str, ...]) -> None:
    """Raise ValueError naming any backbone that is neither registered here nor (with a prefix) timm's, as it is or
    patched with ELFATT."""
    from elfatt.models import list_models

    for name in names:
        if name.startswith(PATCHED_PREFIX) and not name.startswith(PATCHED_PREFIX + "vit_"):
            raise ValueError(f"backbone {name}: patch_timm_vit patches timm's VisionTransformer models (vit_*) only")
        if name.startswith((TIMM_PREFIX, PATCHED_PREFIX)):
            if not timm_imports():
                raise ValueError(f"backbone {name} needs timm, which does not import here")
        elif name not in list_models("*_elfatt_*"):
            known = ", ".join(list_models("*_elfatt_*"))
            raise ValueError(f"unknown backbone {name!r}; choose from {known} or timm:<name> for timm's own")


def build_backbone(name: str, resolution: int) -> nn.Module:
    """Build ``name`` for square images of ``resolution``; timm's Swin gets windows of ``resolution // 32``
    tokens' worth (``resolution // 64`` wide, 7 at 224 is kept) so that every stage divides."""
    if not name.startswith((TIMM_PREFIX, PATCHED_PREFIX)):
        from elfatt.models import create_model

        return create_model(name)
    import timm

    timm_name = name.split(":", 1)[1]
    kwargs: dict = {}
    if resolution != 224:
        kwargs["img_size"] = resolution
        if timm_name.startswith("swin"):
            kwargs["window_size"] = resolution // 64
    model = timm.create_model(timm_name, **kwargs)
    if name.startswith(PATCHED_PREFIX):
        from elfatt.models.timm_vit_patch import patch_timm_vit

        patch_timm_vit(model)
    return model
