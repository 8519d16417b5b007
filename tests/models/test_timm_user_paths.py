"""What a timm user does with a model beyond creating it: the Hugging Face format round trip, pretrained tags."""

from __future__ import annotations

import pytest
import timm
import torch

import elfatt.models  # noqa: F401  (registers the ELFATT variants)

REDUCED = {
    "cswin_elfatt_tiny_224": (dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4)), 96),
    "swin_elfatt_tiny_224": (dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4)), 96),
    "vit_elfatt_tiny_patch16_224": (dict(embed_dim=24, depth=1, num_heads=3), 64),
}


@pytest.mark.parametrize("name", list(REDUCED))
def test_hugging_face_format_round_trip(name, tmp_path, generator):
    """``save_for_hf`` then ``create_model("local-dir:...", pretrained=True)``, as for timm's own models; with
    another ``num_classes`` timm keeps the body and drops the classifier."""
    kwargs, side = REDUCED[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    timm.models.save_for_hf(model, tmp_path, model_args=kwargs)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 3, side, side, generator=generator)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    other_head = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=3).eval()
    assert other_head.get_classifier().out_features == 3
    with torch.no_grad():
        assert torch.equal(other_head.forward_features(x), model.forward_features(x))


def test_unknown_pretrained_tag_is_refused():
    with pytest.raises(RuntimeError, match=r"Invalid pretrained tag \(foo\)"):
        timm.create_model("cswin_elfatt_tiny_224.foo")
