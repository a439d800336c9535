"""Peak memory of a run, for report.json: GPU memory through torch's allocator, host memory as the
process's peak resident set (Linux: VmHWM, which starts afresh at exec, where getrusage's ru_maxrss keeps the
parent's peak of a process started by fork and exec; elsewhere ru_maxrss)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

GIB = 2**30


def reset_peak(device: str) -> None:
    """Start counting the GPU's peak from here (the host's peak cannot be reset: it covers the whole process)."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> dict:
    """{"gpu_allocated_gib", "gpu_reserved_gib"} since `reset_peak` (on a GPU) and {"host_rss_gib"} since the
    process started."""
    peak = {"host_rss_gib": _peak_rss() / GIB}
    if str(device).startswith("cuda"):
        dev = torch.device(device)
        peak["gpu_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / GIB
        peak["gpu_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / GIB
    return peak


def peak_bytes(device) -> int:
    """One peak for a method's own log: the GPU's allocated peak since `reset_peak` on a GPU, else the process's
    peak RSS."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device))
    return _peak_rss()


def _peak_rss() -> int:
    """Bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
