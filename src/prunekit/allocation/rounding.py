"""Per-layer rates rounded to whole weights: Σ_l n_l x_l is exactly round(s · Σ_l n_l), so the model-wide
sparsity is the target to one weight whatever the allocation."""

from __future__ import annotations

import math

import numpy as np


def whole_weight_rates(x: np.ndarray, sizes: np.ndarray, target: float, lo: np.ndarray, hi: np.ndarray) -> list[float]:
    """Round x_l n_l to integers whose sum is round(target · Σ n_l), largest remainders first, in bounds."""
    x, sizes = np.asarray(x, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    exact = x * sizes
    counts = np.clip(np.floor(exact), np.ceil(lo * sizes), np.floor(hi * sizes))
    want = round(target * sizes.sum())
    order = np.argsort(-(exact - counts))  # largest fractional part first
    for _ in range(2):
        for j in order:
            if counts.sum() < want and counts[j] + 1 <= math.floor(hi[j] * sizes[j]):
                counts[j] += 1
    for j in order[::-1]:  # only when x broke the mean: take from the smallest remainders
        if counts.sum() > want and counts[j] - 1 >= math.ceil(lo[j] * sizes[j]):
            counts[j] -= 1
    return (counts / sizes).tolist()
