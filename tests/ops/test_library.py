"""The registered op: torch.library's own checks, the compiled layer keeping the op in its graph (dynamic sizes,
no recompiles), attention dropout drawn alike in the forward and the recomputing backward. Compiled gradients
against eager: tests/test_compile_export.py."""

from __future__ import annotations

import pytest
import torch
from cases import Case
from conftest import assert_close, rel_error
from torch._dynamo.testing import CompileCounterWithBackend

import elfatt
from elfatt import BlockCount
from elfatt.ops.library import attention_backward_op, attention_op


def _op_args(generator, *, lepe: bool, prefix: int, dropout_p: float = 0.0):
    case = Case(2, 4, 5, 7, 6, (3, 4))
    _, views = case.qkv(generator, torch.float32, prefix=prefix)
    q, k, v = (x.detach().clone().requires_grad_() for x in views)
    weights = [None] * 4
    if lepe:
        weights = [torch.randn(12, 1, 3, 3, generator=generator), torch.randn(12, generator=generator)] * 2
        weights = [w.clone().requires_grad_() for w in weights]
    seed = torch.tensor(1234) if dropout_p else None
    return (q, k, v, 5, 7, 3, 4, False, 2, *weights, prefix, None, dropout_p, True, "torch", seed)


@pytest.mark.parametrize("lepe, prefix", [(True, 0), (False, 2), (True, 1)], ids=["lepe", "prefix", "both"])
def test_opcheck(lepe, prefix, generator):
    torch.library.opcheck(attention_op, _op_args(generator, lepe=lepe, prefix=prefix))


def test_dropout_backward_draws_the_forward_mask(generator):
    """With dropout, the backward op recomputes with the forward's seed: its gradients are those of the very
    forward that ran (checked by running the kernels under autograd with the same seed outside the op)."""
    from elfatt.ops.library import _run

    args = _op_args(generator, lepe=True, prefix=1, dropout_p=0.5)
    out = attention_op(*args)
    assert_close(attention_op(*args), out.double(), torch.float64)
    grad = torch.randn(out.shape, generator=generator)
    got = attention_backward_op(grad, *args)
    expected = torch.autograd.grad(_run(*args), [x for x in args[:3] + args[9:13]], grad)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e.double(), torch.float64)


SIZES = [(10, 13), (12, 9), (7, 16)]


@pytest.mark.parametrize("layout", [dict(block=4), dict(block=BlockCount(2, 3)), dict(block=(2, None))], ids=str)
def test_compiled_layer_keeps_the_op_and_compiles_once(layout, generator):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = elfatt.ELFATTAttention(32, num_heads=4, **layout).eval()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    for size in SIZES:
        x = torch.randn(2, 1 + size[0] * size[1], 32, generator=generator)
        with torch.no_grad():
            assert rel_error(compiled(x, size, 1), layer(x, size, 1)) < 1e-6
    assert counter.frame_count == 1, "a later size compiled again: the graph is not dynamic"
    ops = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    assert "elfatt.attention.default" in ops, "the op was traced through instead of kept"
