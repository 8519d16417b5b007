"""Blocks: resolving specs, counting blocks, blockify/unblockify padding and exact inversion, locality."""

from __future__ import annotations

import pytest
import torch
from cases import CASE_IDS, CASES, Case

import elfatt
import elfatt.reference as reference


@pytest.mark.parametrize(
    "size, block, expected",
    [
        ((7, 5), 3, (3, 3)),
        ((7, 5), (2, None), (2, 5)),
        ((7, 5), (None, 4), (7, 4)),
        ((7, 5), (None, None), (7, 5)),
        ((3, 4), 8, (3, 4)),
        ((1, 1), (5, 5), (1, 1)),
    ],
)
def test_resolve_block(size, block, expected):
    assert elfatt.resolve_block(size, block) == expected


@pytest.mark.parametrize(
    "size, num_blocks, expected",
    [
        ((56, 56), (2, 2), (28, 28)),
        ((56, 56), (4, 1), (14, 56)),
        ((7, 7), 1, (7, 7)),
        ((5, 9), (4, 2), (2, 5)),
        ((3, 2), (8, 8), (1, 1)),
    ],
)
def test_block_from_count(size, num_blocks, expected):
    assert elfatt.block_from_count(size, num_blocks) == expected


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_blockify_round_trip_and_padding(case: Case, generator):
    x = torch.randn(case.batch, case.heads, case.tokens, case.dim, generator=generator)
    blocks = elfatt.blockify(x, case.size, case.block)
    bh, bw = case.concrete_block
    rows, cols = -(-case.height // bh), -(-case.width // bw)
    assert blocks.shape == (case.batch, case.heads, rows * cols, bh * bw, case.dim)
    assert torch.equal(elfatt.unblockify(blocks, case.size, case.block), x)
    # Each block holds its tokens in row-major order, then zeros for the padding.
    for index, tokens in enumerate(reference.block_token_indices(case.size, (bh, bw))):
        block = blocks[:, :, index]
        assert torch.equal(block[:, :, : len(tokens)].reshape(-1), _valid_part(x, tokens, (bh, bw), case))
        assert torch.count_nonzero(block).item() == torch.count_nonzero(x[:, :, tokens]).item()


def _valid_part(x, tokens, block, case):
    """The padded block as blockify lays it out, restricted to its valid tokens, flattened for comparison."""
    bh, bw = block
    top, left = tokens[0] // case.width, tokens[0] % case.width
    padded = torch.zeros(case.batch, case.heads, bh * bw, case.dim)
    for token in tokens:
        row, col = token // case.width - top, token % case.width - left
        padded[:, :, row * bw + col] = x[:, :, token]
    return padded[:, :, : len(tokens)].reshape(-1)


def test_unblockify_rejects_wrong_layout():
    with pytest.raises(ValueError, match="do not fit grid 5x7"):
        elfatt.unblockify(torch.randn(1, 2, 6, 4, 3), (5, 7), 2)


@pytest.mark.parametrize("case", [c for c in CASES if c.tokens > 1], ids=[str(c) for c in CASES if c.tokens > 1])
def test_block_attention_is_local_to_its_block(case: Case, generator):
    """Changing every token outside a block, padding side included, leaves that block's outputs unchanged."""
    q, k, v = (x.detach() for x in case.qkv(generator, torch.float32))
    blocks = reference.block_token_indices(case.size, case.concrete_block)
    inside = blocks[-1]
    outside = torch.ones(case.tokens, dtype=torch.bool)
    outside[inside] = False
    before = elfatt.block_attention(q, k, v, case.size, case.block)
    noise = torch.randn(3, *q.shape, generator=generator) * 100
    q2, k2, v2 = (torch.where(outside[:, None], x + n, x) for x, n in zip((q, k, v), noise, strict=True))
    after = elfatt.block_attention(q2, k2, v2, case.size, case.block)
    assert torch.equal(after[:, :, inside], before[:, :, inside])


@pytest.mark.parametrize(
    "size, block, eager_shape, export_shape",
    [
        ((3, 2), 4, (1, 6), (1, 16)),
        ((5, 9), elfatt.BlockCount(4, 2), (3 * 2, 10), (4 * 2, 10)),
        ((6, 4), (2, None), (3, 8), (3, 8)),
    ],
)
def test_export_form_round_trip(size, block, eager_shape, export_shape, generator, block_form):
    """The export form gathers whole blocks (unclipped, every counted block) and scatters them back exactly."""
    x = torch.randn(2, 3, size[0] * size[1], 4, generator=generator)
    blocks = elfatt.blockify(x, size, block)
    assert tuple(blocks.shape[2:4]) == (export_shape if block_form == "export" else eager_shape)
    assert torch.equal(elfatt.unblockify(blocks, size, block), x)
    assert torch.count_nonzero(blocks).item() == torch.count_nonzero(x).item()
