"""The process's resident memory on Linux (``/proc/self``): current, peak, and a reset of the peak; and the memory
free for a new allocation, on a CPU or a CUDA device."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLEAR_REFS", "STATUS", "available_mib", "peak_rss_mib", "reset_peak_rss", "rss_mib", "rss_available"]

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {STATUS}")


def rss_available() -> bool:
    """Whether this system reports the process's RSS and lets its peak be reset (Linux)."""
    return CLEAR_REFS.exists() and STATUS.exists()


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where Linux's clear_refs is unavailable."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def rss_mib() -> float:
    """The process's current RSS (VmRSS), in MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """The process's peak RSS since start or the last :func:`reset_peak_rss`, in MiB."""
    return _status_kib("VmHWM") / 1024


def available_mib(device: object = "cpu") -> float | None:
    """Free memory of ``device`` in MiB: ``MemAvailable`` of ``/proc/meminfo`` on a CPU, the free device memory on
    CUDA; None where it cannot be told."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
