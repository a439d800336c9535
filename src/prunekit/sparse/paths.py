"""Which kernel each SparseLinear24 ran, and why: the record behind "fastest path per shape".

Every choice a layer makes — a timed winner, the dense product on CPU, a fallback — is kept in the layer's
`paths` dict, {label: (path, reason)}, with labels such as "rows=1, float16" or "cpu"; a later decision for
the same label replaces the earlier one. `linear.kernel_paths(model)` gathers them per module name. With the
environment variable PRUNEKIT_LOG=1 (or a comma list containing "kernels") each new decision is also printed
once to stderr as `prunekit: kernel <layer> <label>: <path> — <reason>`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter



def logging_enabled() -> bool:
    """PRUNEKIT_LOG=1, =all or a comma list naming "kernels" (read on every decision: decisions are rare)."""
    value = os.environ.get("PRUNEKIT_LOG", "").strip().lower()
    return value in ("1", "all", "true") or "kernels" in value.split(",")


_LOGGED: set[str] = set()  # lines already printed: unnamed copies of one layer (benchmarks) log once


def note(paths: dict, who: str, label: str, path: str, reason: str) -> None:
    """Record (path, reason) under `label` in a layer's `paths`; log it if it is new and logging is on."""
    entry = (path, reason)
    if paths.get(label) == entry:
        return
    paths[label] = entry
    log(f"{who} {label}: {path} — {reason}")


def log(message: str) -> None:
    """Print `prunekit: kernel <message>` to stderr once per process, if logging is on."""
    if logging_enabled() and message not in _LOGGED:
        _LOGGED.add(message)
        print(f"prunekit: kernel {message}", file=sys.stderr, flush=True)


def path_counts(paths: dict[str, dict[str, tuple[str, str]]]) -> dict[str, int]:
    """How many (layer, label) decisions chose each path, e.g. {"gemv": 32, "lib/6": 32, "dense": 4}."""
    return dict(Counter(path for per_layer in paths.values() for path, _ in per_layer.values()))
