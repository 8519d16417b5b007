"""ELFATTAttention and LePE against the float64 reference: outputs and gradients of inputs and parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DTYPE_IDS, DTYPES, assert_close

import elfatt
import elfatt.ops.reference as reference
from elfatt.modules import DEFAULT_BLOCK, LePE

MODULE_CASES = [
    # dim, heads, size, layer options
    (24, 4, (5, 7), dict(block=(2, 3))),
    (36, 3, (6, 4), dict(block=(None, 3), split=1 / 3, qkv_bias=True)),
    (40, 8, (9, 5), dict(block=elfatt.BlockCount(2, 2))),
    (14, 2, (3, 8), dict(block=(2, None), split=0.0)),
    (16, 1, (4, 3), dict(block=5, split=1.0, lepe_kernel=5)),
]
MODULE_IDS = [f"C{c}-H{h}-{s[0]}x{s[1]}-" + "-".join(f"{k}{v}" for k, v in o.items()) for c, h, s, o in MODULE_CASES]


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fresh random parameters, so that zero-initialised biases are tested too."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("dim, heads, size, options", MODULE_CASES, ids=MODULE_IDS)
def test_module_matches_reference(dim, heads, size, options, dtype, generator):
    layer = elfatt.ELFATTAttention(dim, heads, **options)
    _randomise(layer, generator)
    layer_ref = copy.deepcopy(layer).double()
    layer = layer.to(dtype)
    x = torch.randn(3, size[0] * size[1], dim, generator=generator, dtype=torch.float64)
    x_fast, x_ref = x.to(dtype).requires_grad_(), x.clone().requires_grad_()
    out = layer(x_fast, size)
    ref = reference.elfatt_attention_module(layer_ref, x_ref, size)
    assert_close(out, ref, dtype)
    grad = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(x_fast.grad, x_ref.grad, dtype, "input gradient")
    for (name, param), param_ref in zip(layer.named_parameters(), layer_ref.parameters(), strict=True):
        assert_close(param.grad, param_ref.grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("dim, heads, size, options", MODULE_CASES, ids=MODULE_IDS)
def test_fused_and_plain_paths_agree(dim, heads, size, options, generator):
    layer = elfatt.ELFATTAttention(dim, heads, **options)
    _randomise(layer, generator)
    x = torch.randn(2, size[0] * size[1], dim, generator=generator)
    fused = layer(x, size)
    layer.fused_attn = False
    plain = layer(x, size)
    assert_close(fused, plain, torch.float32)


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (13, 1), (2, 3), (31, 29), (8, 8), (16, 9)])
def test_default_layer_takes_any_grid(size, generator):
    x = torch.randn(2, size[0] * size[1], 256, generator=generator)
    out = elfatt.ELFATTAttention(256, 8)(x, size)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_counted_blocks_grow_with_the_grid():
    layer = elfatt.ELFATTAttention(32, 4, block=elfatt.BlockCount(2, 2))
    assert layer.block_size((56, 56)) == (28, 28)
    assert layer.block_size((14, 28)) == (7, 14)
    assert elfatt.ELFATTAttention(32, 4).block_size((56, 56)) == (DEFAULT_BLOCK, DEFAULT_BLOCK)
    assert elfatt.ELFATTAttention(32, 4, block=8).block == (8, 8)


def test_the_old_block_keyword_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="num_blocks= is deprecated"):
        layer = elfatt.ELFATTAttention(32, 4, num_blocks=(2, 3))
    assert layer.block == elfatt.BlockCount(2, 3)
    with pytest.warns(DeprecationWarning):
        assert layer.num_blocks == (2, 3)
    with pytest.warns(DeprecationWarning):
        layer.num_blocks = 4
    assert layer.block == elfatt.BlockCount(4, 4)
    with pytest.raises(ValueError, match="give only block="):
        elfatt.ELFATTAttention(32, 4, block=4, num_blocks=2)


def test_attention_dropout_applies_in_training_only(generator):
    layer = elfatt.ELFATTAttention(16, 2, attn_drop=0.5)
    x = torch.randn(1, 20, 16, generator=generator)
    layer.eval()
    assert torch.equal(layer(x, (4, 5)), layer(x, (4, 5)))
    layer.train()
    torch.manual_seed(0)
    first = layer(x, (4, 5))
    torch.manual_seed(1)
    assert not torch.allclose(first, layer(x, (4, 5)))


def test_lepe_module_matches_reference(generator):
    module = LePE(12, kernel_size=5)
    v = torch.randn(2, 35, 12, generator=generator)
    # the reference takes [B, heads, N, d]: one head of 12 channels
    expected = reference.lepe(v[:, None], (5, 7), module.conv.weight, module.conv.bias)[:, 0]
    assert_close(module(v, (5, 7)), expected, torch.float32)


@pytest.mark.parametrize(
    "options",
    [dict(block=(3, 4)), dict(block=elfatt.BlockCount(2, 3)), dict(block=(2, None)), dict(split=1.0), dict(split=0.0)],
)
@pytest.mark.parametrize("prefix", [0, 2])
def test_an_empty_batch_gives_an_empty_output_and_gradients(options, prefix):
    """As PyTorch's own layers do (nn.MultiheadAttention, nn.Linear): batch size 0 in, batch size 0 out."""
    layer = elfatt.ELFATTAttention(24, 4, qkv_bias=True, **options)
    x = torch.randn(0, prefix + 5 * 7, 24, requires_grad=True)
    out = layer(x, (5, 7), prefix)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape
    for name, parameter in layer.named_parameters():  # a sum over no rows: every gradient is zero
        assert parameter.grad is not None and torch.equal(parameter.grad, torch.zeros_like(parameter)), name
    q = torch.randn(0, 35, 4, 6, requires_grad=True)
    assert elfatt.elfatt(q, q, q, (5, 7), block=(2, 3)).shape == q.shape
    with torch.no_grad():
        assert layer.eval()(torch.randn(0, prefix + 35, 24), (5, 7), prefix).shape == (0, prefix + 35, 24)
