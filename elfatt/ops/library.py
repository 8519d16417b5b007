"""ELFATT registered with ``torch.library``, so ``torch.compile`` keeps the eager kernels inside its graph.

``elfatt::attention`` runs :func:`~elfatt.ops.attend.attend` on real tensors; its fake tells the compiler the
output's shape (that of ``v``) without tracing the plan, so one graph serves every grid size. The backward is a
second op, ``elfatt::attention_backward``, which recomputes the forward under autograd and differentiates it
(as activation checkpointing does): the kernels' own saved tensors never cross the graph boundary. Attention
dropout draws its mask from the ``seed`` input, so the recomputation draws the same one.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from elfatt.ops.attend import attend

__all__ = ["attention_op"]


def _lepe(weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor | None] | None:
    return None if weight is None else (weight, bias)


def _run(
    q, k, v, height, width, block_h, block_w, by_count, num_global_heads, global_weight, global_bias, block_weight,
    block_bias, prefix, scale, dropout_p, fused, backend, seed,
) -> Tensor:  # fmt: skip
    args = (
        q, k, v, (height, width), (block_h, block_w, by_count), num_global_heads, _lepe(global_weight, global_bias),
        _lepe(block_weight, block_bias), prefix, scale, dropout_p, fused, backend,
    )  # fmt: skip
    if dropout_p == 0.0 or seed is None:
        return attend(*args)
    with torch.random.fork_rng(devices=[q.device] if q.is_cuda else []):
        torch.manual_seed(int(seed.item()))
        return attend(*args)


def _attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    height: int,
    width: int,
    block_h: int,
    block_w: int,
    by_count: bool,
    num_global_heads: int,
    global_weight: Tensor | None,
    global_bias: Tensor | None,
    block_weight: Tensor | None,
    block_bias: Tensor | None,
    prefix: int,
    scale: float | None,
    dropout_p: float,
    fused: bool,
    backend: str,
    seed: Tensor | None,
) -> Tensor:
    """:func:`elfatt.ops.elfatt` on checked inputs, the block encoded as by :func:`~elfatt.ops.blocks.encode_block`;
    ``[B, P + H * W, heads, d_v]``, contiguous."""
    with torch.no_grad():
        return _run(
            q, k, v, height, width, block_h, block_w, by_count, num_global_heads, global_weight, global_bias,
            block_weight, block_bias, prefix, scale, dropout_p, fused, backend, seed,
        ).contiguous()  # fmt: skip


attention_op = torch.library.custom_op("elfatt::attention", _attention, mutates_args=())


@attention_op.register_fake
def _(q, k, v, *args) -> Tensor:
    return v.new_empty(v.shape)


_DIFFERENTIABLE = (0, 1, 2, 9, 10, 11, 12)  # q, k, v and the LePE weights and biases


@contextlib.contextmanager
def _autograd_inside_op():
    """Autograd back on inside an op's kernel, which the dispatcher runs with autograd's keys excluded."""
    with contextlib.ExitStack() as stack:
        for key in (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.AutogradOther):
            stack.enter_context(torch._C._SetExcludeDispatchKeyGuard(key, False))
        stack.enter_context(torch.enable_grad())
        yield


def _backward_schema() -> str:
    """The backward op's schema: the incoming gradient, then every input of the forward op, to a list of
    gradients."""
    forward = torch.library.infer_schema(_attention, mutates_args=())
    return f"(Tensor grad, {forward[1 : forward.index(') ->')]}) -> Tensor[]"


@torch.library.custom_op("elfatt::attention_backward", mutates_args=(), schema=_backward_schema())
def attention_backward_op(grad: Tensor, *forward_inputs: object) -> list[Tensor]:
    """Gradients of :func:`attention_op` for q, k, v and the LePE weights and biases that are given, in that order."""
    args = list(forward_inputs)
    inputs = []
    for index in _DIFFERENTIABLE:
        if args[index] is not None:
            args[index] = args[index].detach().requires_grad_()
            inputs.append(args[index])
    with _autograd_inside_op():
        out = _run(*args)
        grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    return [x.new_zeros(x.shape) if g is None else g.contiguous() for x, g in zip(inputs, grads, strict=True)]


@attention_backward_op.register_fake
def _(grad, q, k, v, height, width, block_h, block_w, by_count, num_global_heads, *rest) -> list[Tensor]:
    weights = [x for x in rest[:4] if x is not None]
    return [x.new_empty(x.shape) for x in (q, k, v, *weights)]


def _setup_context(ctx, inputs, output) -> None:
    ctx.inputs = inputs
    ctx.save_for_backward(*(inputs[i] for i in _DIFFERENTIABLE if inputs[i] is not None), *(
        [inputs[-1]] if inputs[-1] is not None else []))  # fmt: skip


def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    inputs = list(ctx.inputs)
    saved = iter(ctx.saved_tensors)
    for index in (*_DIFFERENTIABLE, len(inputs) - 1):
        if inputs[index] is not None:
            inputs[index] = next(saved)
    grads = iter(attention_backward_op(grad, *inputs))
    return tuple(next(grads) if i in _DIFFERENTIABLE and inputs[i] is not None else None for i in range(len(inputs)))


attention_op.register_autograd(_backward, setup_context=_setup_context)
