"""Padded sequences in every mechanism that takes a key-padding mask: a padded sequence's real tokens come out as the
sequence alone does, whatever the padding holds; the mechanisms that cannot leave padding out say so."""

from __future__ import annotations

import pytest
import torch

from elfatt_lab.attention.registry import MECHANISMS, build_attention, takes_key_padding_mask

DIM, HEADS = 16, 4
TAKES_PADDING = {"vanilla", "sdpa", "elfatt", "elfatt-b4", "elfatt-window", "elfatt-linear", "vanilla-lepe"}
TAKES_PADDING |= {"sdpa-lepe", "efficient-lepe", "efficient", "flatten"}


def test_which_mechanisms_take_padding():
    taking = {name for name in MECHANISMS if takes_key_padding_mask(build_attention(name, DIM, HEADS))}
    assert taking == TAKES_PADDING


# ELFATT with a block count cuts the padded length into its blocks, so a padded sequence has other blocks than the
# sequence alone: by design, not compared here.
@pytest.mark.parametrize("name", sorted(TAKES_PADDING - {"elfatt-b4"}))
def test_padded_sequence_matches_the_sequence_alone(name, generator):
    torch.manual_seed(0)
    layer = build_attention(name, DIM, HEADS).double().eval()
    for parameter in layer.parameters():  # LePE and DWC start at zero in some mechanisms: draw every weight
        parameter.data = torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.3
    length, lengths = 27, [27, 13, 5]
    x = torch.randn(len(lengths), length, DIM, generator=generator, dtype=torch.float64)
    mask = torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]
    out = layer(x, (1, length), key_padding_mask=mask)
    x_other = x.clone()
    x_other[mask] = 50 * torch.randn(x_other[mask].shape, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(layer(x_other, (1, length), key_padding_mask=mask)[~mask], out[~mask])
    for row, real in enumerate(lengths):
        alone = layer(x[row : row + 1, :real], (1, real))
        torch.testing.assert_close(out[row : row + 1, :real], alone, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("mask", "message"),
    [(torch.zeros(2, 9), "bool"), (torch.zeros(2, 8, dtype=torch.bool), r"\[B, L\]")],
    ids=["float-mask", "short-mask"],
)
def test_bad_mask_is_named(mask, message):
    layer = build_attention("sdpa", DIM, HEADS)
    with pytest.raises((TypeError, ValueError), match=message):
        layer(torch.randn(2, 9, DIM), (1, 9), key_padding_mask=mask)


def test_elfatt_layer_takes_padding_on_sequences_only():
    layer = build_attention("elfatt", DIM, HEADS)
    with pytest.raises(ValueError, match="key_padding_mask is for sequences"):
        layer(torch.randn(2, 27, DIM), (3, 9), key_padding_mask=torch.zeros(2, 27, dtype=torch.bool))
