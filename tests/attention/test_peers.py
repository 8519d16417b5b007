"""The peer attention mechanisms against float64 references written plainly from each paper's equations."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from elfatt_lab.attention import PEERS, build_peer

DIM, HEADS, BATCH = 16, 4, 2

# (peer, options) pairs checked against the references; windows, stripes and agent grids do not divide the sizes.
CASES = [
    ("vanilla", {}),
    ("sdpa", {}),
    ("swin", {"window_size": 3}),
    ("swin", {"window_size": (4, 3)}),
    ("cswin", {"split_size": 4}),
    ("cswin", {"split_size": 2}),
    ("efficient", {}),
    ("flatten", {}),
    ("flatten", {"focusing_factor": 2.0, "kernel_size": 3}),
    ("agent", {"agent_num": 4}),
    ("agent", {"agent_num": 49}),
]
SIZES = [(5, 9), (7, 4), (1, 1)]


def case_id(case: tuple[str, dict]) -> str:
    name, options = case
    return "-".join([name, *(f"{key}{value}" for key, value in options.items())]).replace(" ", "")


def make_peer(name: str, options: dict, seed: int = 0) -> nn.Module:
    """A float64 peer with every parameter (qkv bias, bias tables, scales, convs) drawn at random."""
    peer = build_peer(name, DIM, HEADS, qkv_bias=True, **options).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peer.parameters():
            param.copy_(0.4 * torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return peer


def make_tokens(size: tuple[int, int], seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, size[0] * size[1], DIM, generator=generator, dtype=torch.float64).to(dtype)


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def softmax(scores: Tensor, dim: int) -> Tensor:
    e = torch.exp(scores - scores.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def split_qkv(peer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    qkv = linear(x, peer.qkv)
    return qkv[..., :DIM], qkv[..., DIM : 2 * DIM], qkv[..., 2 * DIM :]


def depthwise_conv(grid: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Zero-padded 'same' depthwise conv of ``grid`` ``[H, W, C]`` as a sum of shifted copies."""
    height, width, _ = grid.shape
    size = weight.shape[-1]
    pad = size // 2
    padded = torch.zeros(height + 2 * pad, width + 2 * pad, grid.shape[-1], dtype=grid.dtype)
    padded[pad : pad + height, pad : pad + width] = grid
    out = bias.expand(height, width, -1).clone()
    for dy in range(size):
        for dx in range(size):
            out += weight[:, 0, dy, dx] * padded[dy : dy + height, dx : dx + width]
    return out


def per_head(peer: nn.Module, x: Tensor, attend: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """Project x, run ``attend(q, k, v)`` on each batch item's ``[N, d]`` slices of each head, then project out."""
    q, k, v = split_qkv(peer, x)
    d = DIM // HEADS
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for head in range(HEADS):
            ch = slice(head * d, (head + 1) * d)
            out[b, :, ch] = attend(q[b, :, ch], k[b, :, ch], v[b, :, ch])
    return linear(out, peer.proj)


def ref_softmax_attention(peer: nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V per batch and head (vanilla and SDPA)."""
    return per_head(peer, x, lambda q, k, v: softmax(q @ k.T / math.sqrt(DIM // HEADS), -1) @ v)


def ref_swin(peer: nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """Windows on the zero-padded grid, scores plus the (2wh-1) x (2ww-1) bias table at each relative offset."""
    (height, width), (wh, ww) = size, peer.window_size
    d = DIM // HEADS
    padded_h, padded_w = math.ceil(height / wh) * wh, math.ceil(width / ww) * ww
    grid = torch.zeros(x.shape[0], padded_h, padded_w, DIM, dtype=x.dtype)
    grid[:, :height, :width] = x.reshape(-1, height, width, DIM)
    q, k, v = split_qkv(peer, grid)
    table = peer.relative_position_bias_table.reshape(2 * wh - 1, 2 * ww - 1, HEADS)
    cells = [(row, col) for row in range(wh) for col in range(ww)]
    bias = torch.empty(HEADS, len(cells), len(cells), dtype=x.dtype)
    for i, (yi, xi) in enumerate(cells):
        for j, (yj, xj) in enumerate(cells):
            bias[:, i, j] = table[yi - yj + wh - 1, xi - xj + ww - 1]
    out = torch.zeros_like(grid)
    for b in range(x.shape[0]):
        for y0 in range(0, padded_h, wh):
            for x0 in range(0, padded_w, ww):
                window = (b, slice(y0, y0 + wh), slice(x0, x0 + ww))
                for head in range(HEADS):
                    ch = slice(head * d, (head + 1) * d)
                    qw, kw, vw = (t[window][..., ch].reshape(-1, d) for t in (q, k, v))
                    attn = softmax(qw @ kw.T / math.sqrt(d) + bias[head], -1)
                    out[window][..., ch] = (attn @ vw).reshape(wh, ww, d)
    return linear(out[:, :height, :width].reshape(x.shape), peer.proj)


def ref_cswin(peer: nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """Stripes over the real tokens; the padded tokens of a stripe enter as extra zero scores with zero values."""
    height, width = size
    sw, d, half = peer.split_size, DIM // HEADS, DIM // 2
    q, k, v = (t.reshape(-1, height, width, DIM) for t in split_qkv(peer, x))
    out = torch.zeros_like(q)
    for branch, vertical in ((0, False), (1, True)):
        length = width if vertical else height
        before = (-length % sw) // 2
        conv = peer.lepe[branch]
        for start in range(-before, length, sw):
            lo, hi = max(start, 0), min(start + sw, length)
            cells = [(y, c) for y in range(height) for c in range(width) if lo <= (c if vertical else y) < hi]
            n_pad = (sw - (hi - lo)) * (height if vertical else width)
            rows, cols = torch.tensor([y for y, _ in cells]), torch.tensor([c for _, c in cells])
            for b in range(q.shape[0]):
                for head in range(HEADS // 2):
                    ch = slice(branch * half + head * d, branch * half + (head + 1) * d)
                    qs, ks, vs = (t[b, rows, cols, ch] for t in (q, k, v))
                    scores = torch.cat([qs @ ks.T / math.sqrt(d), torch.zeros(len(cells), n_pad, dtype=x.dtype)], -1)
                    out[b, rows, cols, ch] = softmax(scores, -1)[:, : len(cells)] @ vs
                v_half = v[b, ..., branch * half : (branch + 1) * half]
                for y, c in cells:
                    lepe = conv.bias.clone()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = y + dy, c + dx
                            in_stripe = lo <= (nx if vertical else ny) < hi
                            if in_stripe and 0 <= ny < height and 0 <= nx < width:
                                lepe += conv.weight[:, 0, dy + 1, dx + 1] * v_half[ny, nx]
                    out[b, y, c, branch * half : (branch + 1) * half] += lepe
    return linear(out.reshape(x.shape), peer.proj)


def ref_efficient(peer: nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """(rho_q(Q) rho_k(K)^T) V: queries softmaxed over channels, keys over tokens, no scale."""
    return per_head(peer, x, lambda q, k, v: (softmax(q, 1) @ softmax(k, 0).T) @ v)


def ref_flatten(peer: nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """phi_p on whole tokens, quadratic-form linear attention with its normaliser, plus the shared per-head DWC."""
    height, width = size
    d, p = DIM // HEADS, peer.focusing_factor
    q, k, v = split_qkv(peer, x)
    scale = torch.log1p(torch.exp(peer.scale.reshape(DIM)))

    def phi(t: Tensor) -> Tensor:
        r = (torch.clamp(t, min=0) + 1e-6) / scale
        return r.norm(dim=-1, keepdim=True) / (r**p).norm(dim=-1, keepdim=True) * r**p

    q, k = phi(q), phi(k)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for head in range(HEADS):
            ch = slice(head * d, (head + 1) * d)
            sim = q[b, :, ch] @ k[b, :, ch].T
            dwc = depthwise_conv(v[b, :, ch].reshape(height, width, d), peer.dwc.weight, peer.dwc.bias)
            out[b, :, ch] = (sim @ v[b, :, ch]) / (sim.sum(-1, keepdim=True) + 1e-6) + dwc.reshape(-1, d)
    return linear(out, peer.proj)


def ref_agent(peer: nn.Module, x: Tensor, size: tuple[int, int]) -> Tensor:
    """Agents = bin means of Q (torch's adaptive-pool bins), aggregation then broadcast, plus the DWC of V."""
    height, width = size
    d = DIM // HEADS
    q, k, v = split_qkv(peer, x)
    agent_h, agent_w = min(peer.agent_side, height), min(peer.agent_side, width)
    q_grid = q.reshape(-1, height, width, DIM)
    agents = torch.zeros(x.shape[0], agent_h * agent_w, DIM, dtype=x.dtype)
    for i in range(agent_h):
        for j in range(agent_w):
            y0, y1 = (i * height) // agent_h, -(-((i + 1) * height) // agent_h)
            x0, x1 = (j * width) // agent_w, -(-((j + 1) * width) // agent_w)
            agents[:, i * agent_w + j] = q_grid[:, y0:y1, x0:x1].mean(dim=(1, 2))
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for head in range(HEADS):
            ch = slice(head * d, (head + 1) * d)
            agent_v = softmax(agents[b, :, ch] @ k[b, :, ch].T / math.sqrt(d), -1) @ v[b, :, ch]
            out[b, :, ch] = softmax(q[b, :, ch] @ agents[b, :, ch].T / math.sqrt(d), -1) @ agent_v
        dwc = depthwise_conv(v[b].reshape(height, width, DIM), peer.dwc.weight, peer.dwc.bias)
        out[b] += dwc.reshape(-1, DIM)
    return linear(out, peer.proj)


REFERENCES = {
    "vanilla": ref_softmax_attention,
    "sdpa": ref_softmax_attention,
    "swin": ref_swin,
    "cswin": ref_cswin,
    "efficient": ref_efficient,
    "flatten": ref_flatten,
    "agent": ref_agent,
}


def rel_err(out: Tensor, ref: Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def test_every_peer_has_a_reference() -> None:
    assert set(REFERENCES) == set(PEERS)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"H{s[0]}-W{s[1]}")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference_float64(case: tuple[str, dict], size: tuple[int, int]) -> None:
    name, options = case
    peer = make_peer(name, options)
    x = make_tokens(size)
    with torch.no_grad():
        out = peer(x, size)
        ref = REFERENCES[name](peer, x, size)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert rel_err(out, ref) < 1e-10


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"H{s[0]}-W{s[1]}")
@pytest.mark.parametrize("name", ["vanilla", "sdpa", "efficient"])
def test_lepe_adds_a_depthwise_conv_of_v_before_the_projection(name: str, size: tuple[int, int]) -> None:
    """``lepe=True``: proj(attention + DWConv(V)) = the peer's reference + DWConv(V) through proj's weight."""
    peer = make_peer(name, {"lepe": True})
    x = make_tokens(size)
    v = linear(x, peer.qkv)[..., 2 * DIM :]
    lepe = torch.stack(
        [depthwise_conv(v[b].reshape(*size, DIM), peer.lepe.conv.weight, peer.lepe.conv.bias) for b in range(BATCH)]
    ).reshape(BATCH, -1, DIM)
    with torch.no_grad():
        out = peer(x, size)
        ref = REFERENCES[name](peer, x, size) + lepe @ peer.proj.weight.T
    assert rel_err(out, ref) < 1e-10
    assert rel_err(out, REFERENCES[name](peer, x, size)) > 1e-3


def test_lepe_is_offered_only_where_attend_is_the_mechanism() -> None:
    with pytest.raises(TypeError):
        build_peer("swin", DIM, HEADS, lepe=True)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)],
    ids=["fp32", "bf16", "fp16"],
)
@pytest.mark.parametrize("size", [(1, 1), (3, 17), (5, 9)], ids=lambda s: f"H{s[0]}-W{s[1]}")
@pytest.mark.parametrize("name", sorted(PEERS))
def test_low_precision_is_finite_and_close(name: str, size: tuple[int, int], dtype: torch.dtype, tol: float) -> None:
    peer = make_peer(name, {}).to(dtype)
    x = make_tokens(size, dtype=dtype)
    with torch.no_grad():
        out = peer(x, size)
        ref = copy.deepcopy(peer).double()(x.double(), size)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < tol


@pytest.mark.parametrize("name", sorted(PEERS))
def test_backward_gives_finite_grads(name: str) -> None:
    size = (5, 9)
    peer = make_peer(name, {}).float()
    x = make_tokens(size, dtype=torch.float32).requires_grad_()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    peer(x, size).backward(grad)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for param_name, param in peer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", sorted(PEERS))
def test_bad_input_raises(name: str) -> None:
    peer = build_peer(name, DIM, HEADS)
    x = make_tokens((5, 9), dtype=torch.float32)
    with pytest.raises(ValueError, match="does not match"):
        peer(x, (5, 8))
    with pytest.raises(ValueError, match="rank 3"):
        peer(x[0], (5, 9))
    with pytest.raises(ValueError, match="channels"):
        peer(x[..., :-1], (5, 9))
    with pytest.raises(ValueError, match="not divisible"):
        build_peer(name, DIM, 3)


def test_build_peer_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*agent, cswin, efficient, flatten, sdpa, swin, vanilla"):
        build_peer("nope", DIM, HEADS)


def test_build_peer_passes_options() -> None:
    peer = build_peer("swin", DIM, HEADS, window_size=(2, 5), qkv_bias=True)
    assert peer.window_size == (2, 5) and peer.qkv.bias is not None
    assert peer.relative_position_bias_table.shape == (3 * 9, HEADS)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("cswin", {"split_size": 0}, "split_size"),
        ("swin", {"window_size": 0}, "window_size"),
        ("agent", {"agent_num": 8}, "perfect square"),
        ("agent", {"kernel_size": 4}, "odd"),
        ("flatten", {"kernel_size": 2}, "odd"),
    ],
)
def test_bad_options_raise(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_peer(name, DIM, HEADS, **options)


def test_cswin_needs_even_heads() -> None:
    with pytest.raises(ValueError, match="even"):
        build_peer("cswin", 12, 3)
