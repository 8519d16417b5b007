"""Bad timm arguments are named at construction, in one line, for every family; feature_info matches forward."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")
import elfatt.models  # noqa: E402, F401

FAMILIES = ["swin_elfatt_tiny_224", "cswin_elfatt_tiny_224", "vit_elfatt_tiny_patch16_224"]
SMALL = dict(img_size=64)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=-1), r"num_classes must be an int >= 0"),
        (dict(num_classes=2.5), r"num_classes must be an int >= 0"),
        (dict(in_chans=0), r"in_chans must be an int >= 1"),
        (dict(features_only=True, out_indices=(3, 3)), "twice"),
        (dict(features_only=True, out_indices=(0, 99)), r"out of range: the model has \d+ (stage|block)s"),
        (dict(features_only=True, out_indices=()), "out of range"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_arguments_are_refused_at_construction(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as refusal:
        timm.create_model(name, **kwargs)
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_head_of_negative_size_is_refused_on_reset(name):
    model = timm.create_model(name, num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(-1)


@pytest.mark.parametrize(
    "name, out_indices", [("swin_elfatt_tiny_224", (1, -1)), ("vit_elfatt_tiny_patch16_224", (2, 5))]
)
def test_feature_info_lists_what_forward_returns(name, out_indices):
    model = timm.create_model(name, features_only=True, out_indices=out_indices).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 224, 224))
    assert len(features) == len(model.feature_info.channels()) == len(out_indices)
    assert [f.shape[1] for f in features] == model.feature_info.channels()
