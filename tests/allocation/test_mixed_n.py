"""Mixed N:M rounding (allocation/rounding.py `mixed_n`): whole N_l in [1, M − 1] whose size-weighted average is
exactly N, each the floor or ceiling of M (1 − x_l) when the rates average the target."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.allocation import mixed_n, mixed_rates, owl_rates
from prunekit.patterns import Pattern


@pytest.mark.parametrize("n,m", [(2, 4), (2, 8), (4, 8), (1, 4), (3, 4)])
def test_mixed_n_averages_exactly_and_rounds_to_a_neighbour(n, m):
    rng = np.random.default_rng(n * 10 + m)
    sizes = [4096] * 12
    target = 1 - n / m
    rates = owl_rates(rng.uniform(0.001, 0.02, 12).tolist(), sizes, target, 1 / m)
    N = mixed_n(rates, sizes, n, m)
    assert sum(N) == n * len(N) and all(1 <= k <= m - 1 for k in N)
    k = [m * (1 - x) for x in rates]
    if 1 < n < m - 1:  # no bound in the way: each N_l is a neighbour of its k_l, and the order is kept
        assert all(np.floor(kl - 1e-9) <= Nl <= np.ceil(kl + 1e-9) for kl, Nl in zip(k, N))
        assert len(set(N)) > 1
    order = np.argsort(k)
    assert all(np.diff(np.asarray(N)[order]) >= 0)


def test_mixed_n_keeps_each_size_class_at_n():
    sizes = [100, 100, 100, 300, 300]
    N = mixed_n([0.25, 0.5, 0.75, 0.3, 0.7], sizes, 2, 4)
    assert N == [3, 2, 1, 3, 1]
    assert sum(s * k for s, k in zip(sizes, N)) == 2 * sum(sizes)
    # a class whose rates all lean one way still averages N: the bounds and the class total decide
    assert mixed_n([0.25, 0.25, 0.75, 0.75], [1, 1, 2, 2], 2, 4) == [2, 2, 2, 2]


def test_mixed_rates_are_the_layers_n_over_m():
    rates, record = mixed_rates([0.62, 0.75, 0.88], [64] * 3, Pattern.parse("mixed-2:8"))
    assert record == {"pattern": "mixed-2:8", "N": [3, 2, 1], "continuous_rates": [0.62, 0.75, 0.88]}
    assert rates == [1 - 3 / 8, 1 - 2 / 8, 1 - 1 / 8]
