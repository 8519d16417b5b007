"""Helpers for the model tests: building on the meta device, and counting parameters and FLOPs there."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.utils._device
from torch.utils.flop_counter import FlopCounterMode

import elfatt.ops.attend
import elfatt.ops.kernels


@pytest.fixture
def meta_device(monkeypatch):
    """Build models on the meta device: full-size variants in milliseconds, no memory.

    The NaN-filling ``torch.empty`` of the top conftest is a Python wrapper, which ``torch.device("meta")``
    does not recognise as a factory (and may have cached so), so it is undone and the cache cleared first.
    """
    monkeypatch.undo()
    torch.utils._device._device_constructors.cache_clear()
    with torch.device("meta"):
        yield


def count_params_flops(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, float, float]:
    """Parameters, and GMACs (FlopCounterMode's FLOPs / 2, as papers count) of one image, with and without the
    blockified heads' softmax-attention matmuls (the paper's "nFA" and "FA" columns)."""
    sparse_macs = 0
    softmax_attention = elfatt.ops.kernels._softmax_attention

    def counting(q, k, v, *args):
        nonlocal sparse_macs
        sparse_macs += q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return softmax_attention(q, k, v, *args)

    x = torch.empty(1, 3, *size, device=next(model.parameters()).device)
    # The model's arithmetic: edge blocks at their own size (the regions layout), not the CPU's padded blocks.
    patches = [
        mock.patch.object(elfatt.ops.kernels, "_softmax_attention", counting),
        mock.patch.object(elfatt.ops.attend, "padded_layout", lambda device: False),
    ]
    with patches[0], patches[1], torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model.eval()(x)
    macs = counter.get_total_flops() / 2
    return sum(p.numel() for p in model.parameters()), macs / 1e9, (macs - sparse_macs) / 1e9
