"""GPU timing of the global-part kernels: memory floor, PyTorch path, Triton path, SDPA global attention.

``python -m elfatt_lab.bench.kernels`` (needs a CUDA GPU and the ``triton`` extra). Method and notes:
``docs/kernels.md``. All times are medians of CUDA-event timings after warm-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from elfatt.ops import elfatt
from elfatt.ops.kernels import global_linear_attention
from elfatt_lab._csv import write_rows
from elfatt_lab.bench.measure import time_call

__all__ = ["main", "global_part_bytes"]


def global_part_bytes(batch: int, heads: int, tokens: int, dim: int, element_size: int) -> int:
    """Bytes the global part must move at least: read q, k, v once and write the output once."""
    return 4 * batch * heads * tokens * dim * element_size


def _cuda_ms(fn: Callable[[], object]) -> float:
    """Median of 30 CUDA-event timings after 5 warm-up calls."""
    return time_call(fn, torch.device("cuda"), warmup=5, repeats=30).median_ms


def _copy_bandwidth() -> float:
    """Achievable device-memory bandwidth in bytes/s, from a 1 GiB device-to-device copy (read + write)."""
    source = torch.empty(2**29, dtype=torch.float16, device="cuda")
    target = torch.empty_like(source)
    ms = _cuda_ms(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / (ms / 1e3)


def _measure_side(side: int, args: argparse.Namespace, bandwidth: float) -> dict:
    """Times of one grid side: the global part (floor, PyTorch, Triton; forward, and forward + backward), the
    whole layer, SDPA flash."""
    tokens = side * side
    # [B, N, heads, d], the op's layout
    q, k, v = (
        torch.randn(args.batch, tokens, args.heads, args.dim, device="cuda", dtype=torch.bfloat16) for _ in "qkv"
    )
    half = args.heads // 2
    floor_ms = global_part_bytes(args.batch, half, tokens, args.dim, 2) / bandwidth * 1e3
    row = dict(side=side, tokens=tokens, floor_ms=floor_ms)
    leaves = [x[:, :, :half].detach().requires_grad_() for x in (q, k, v)]
    grad = torch.randn_like(leaves[2]).transpose(1, 2)
    for backend in ("torch", "triton"):

        def forward_backward(backend: str = backend) -> None:
            global_linear_attention(*leaves, backend).backward(grad)

        row[f"global_{backend}_fwd_bwd_ms"] = _cuda_ms(forward_backward)
        row[f"global_{backend}_ms"] = _cuda_ms(
            lambda: global_linear_attention(q[:, :, :half], k[:, :, :half], v[:, :, :half], backend)  # noqa: B023
        )
        row[f"layer_{backend}_ms"] = _cuda_ms(
            lambda: elfatt(q, k, v, (side, side), block=args.block, backend=backend)  # noqa: B023
        )
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        head_major = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
        row["sdpa_flash_ms"] = _cuda_ms(lambda: F.scaled_dot_product_attention(*head_major))
    row["triton_vs_floor"] = row["global_triton_ms"] / floor_ms
    row["layer_speedup_vs_sdpa"] = row["sdpa_flash_ms"] / row["layer_triton_ms"]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elfatt_lab.bench.kernels", description=__doc__)
    parser.add_argument("--sides", nargs="+", type=int, default=[32, 64, 128, 192, 256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8, help="heads of the layer; half are global")
    parser.add_argument("--dim", type=int, default=64, help="head dim")
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench-results/kernels.csv"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m elfatt_lab.bench.kernels: error: needs a CUDA GPU", file=sys.stderr)
        return 2
    bandwidth = _copy_bandwidth()
    gpu = torch.cuda.get_device_name()
    print(
        f"{gpu}, bf16, batch {args.batch}, {args.heads} heads of {args.dim}, copy bandwidth {bandwidth / 1e12:.2f} TB/s"
    )
    rows = []
    for side in args.sides:
        row = _measure_side(side, args, bandwidth)
        rows.append(dict(gpu=gpu, **row))
        print(
            f"{side:>4}^2 floor {row['floor_ms']:.4f} ms | global torch {row['global_torch_ms']:.4f} triton "
            f"{row['global_triton_ms']:.4f} ({row['triton_vs_floor']:.2f}x floor), fwd+bwd torch "
            f"{row['global_torch_fwd_bwd_ms']:.4f} triton {row['global_triton_fwd_bwd_ms']:.4f} | layer torch "
            f"{row['layer_torch_ms']:.4f} triton {row['layer_triton_ms']:.4f} | SDPA flash {row['sdpa_flash_ms']:.4f} "
            f"({row['layer_speedup_vs_sdpa']:.1f}x)",
            flush=True,
        )
    write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
