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


def mixed_n(rates, sizes, n: int, m: int) -> list[int]:
    """Each layer's N_l for mixed N:M, from its continuous sparsity x_l: k_l = M (1 − x_l) rounded to an integer
    in [1, M − 1], largest remainders first, so that Σ_l n_l N_l = N Σ_l n_l exactly (the layers' N_l:M average
    N:M over all pruned weights).

    Exactness needs whole steps to cancel, so layers trade them only with layers of the same size n_l (a
    transformer's decoder layers are one size; if several sizes, each keeps its own average at N)."""
    k = np.round(m * (1.0 - np.asarray(rates, dtype=np.float64)), 9)  # 9 digits: 1.9999999999 is 2
    sizes = np.asarray(sizes)
    N = np.clip(np.floor(k), 1, m - 1).astype(int)
    for size in np.unique(sizes):
        same = np.flatnonzero(sizes == size)
        want = n * len(same)
        while N[same].sum() < want:  # one step up where k_l − N_l is largest
            room = same[N[same] < m - 1]
            N[room[np.argmax(k[room] - N[room])]] += 1
        while N[same].sum() > want:  # one step down where it is smallest
            room = same[N[same] > 1]
            N[room[np.argmin(k[room] - N[room])]] -= 1
    return N.tolist()
