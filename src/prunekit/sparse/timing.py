"""GPU timing the way serving runs: calls captured in a CUDA graph, replays timed with CUDA events.

Eager cuSPARSELt calls spend ≈0.6 ms per call on host-side setup that a graph removes, and decode steps
run graphed in practice. Callers that time weights cycle through enough copies to exceed the L2 cache
(`L2_BYTES`, 50 MB on H100) several times, so that the weights are not served from it — or, where a layer
cannot be copied cheaply, read a buffer of twice the L2 size before each call (`cold_timer`).
"""

from __future__ import annotations

import statistics
import time

import torch

L2_BYTES = 50 * 2**20


def copies_past_l2(nbytes: int) -> int:
    """How many copies of an `nbytes` weight to cycle through so that they exceed the L2 cache four times."""
    return max(1, -(-4 * L2_BYTES // nbytes))


def graph(fn):
    """Capture `fn()` (on static inputs) in a CUDA graph; returns a callable that replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    return g.replay


def median_ms(run, repeats: int) -> float:
    """Median milliseconds of `run()` over `repeats` runs: CUDA events where CUDA exists, else wall time."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def time_calls(calls: list, repeats: int = 20, graphed: bool = True) -> float:
    """Median milliseconds per call of `calls` (zero-argument callables run in turn), on CUDA."""

    def run_all():
        for call in calls:
            call()

    for _ in range(3):  # warm-up: kernel compilation, algorithm search, allocator
        run_all()
    torch.cuda.synchronize()
    return median_ms(graph(run_all) if graphed else run_all, repeats) / len(calls)


def cold_timer(device, repeats: int = 10, rounds: int = 8):
    """A function `call -> milliseconds` that times `call()` with its operands starting in device memory, as a
    layer's weight does in a model whose other layers evict it from the L2 cache. Timed warm, a dense weight
    small enough for the L2 (32 MB at 4096×4096 fp16) would be served from it and beat the 2:4 kernels, whose
    whole advantage is reading fewer bytes. Each graph replays `rounds` × (read 2 × L2_BYTES, call); the read
    alone, timed once here, is subtracted. Reading rather than writing leaves no dirty lines to write back
    during the call."""
    buf = torch.zeros(2 * L2_BYTES // 4, dtype=torch.float32, device=device)
    flush = buf.sum
    flush_ms = time_calls([flush] * rounds, repeats=repeats)

    def time_cold(call) -> float:
        return 2 * time_calls([flush, call] * rounds, repeats=repeats) - flush_ms

    return time_cold
