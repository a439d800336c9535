import numpy as np
import torch

from prunekit.allocation.rmi import hsic, gram, layer_importance, normalized_hsic, rmi_sparsity, similarity_matrix


def test_hsic_of_identical_representations_is_maximal():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 48, generator=g)
    Y = X @ torch.randn(48, 48, generator=g) + 0.5 * torch.randn(256, 48, generator=g)  # related, not equal
    for kernel in ("linear", "rbf"):
        assert abs(normalized_hsic(X, X, kernel) - 1.0) < 1e-6
        assert normalized_hsic(X, Y, kernel) < 1.0 - 1e-3


def test_hsic_of_independent_representations_is_near_zero():
    """Also when the feature dimension exceeds the sample count, where the biased estimator (plain
    linear CKA) would be far from zero."""
    g = torch.Generator().manual_seed(1)
    for n, d in ((512, 64), (128, 1024)):
        X, Y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        for kernel in ("linear", "rbf"):
            assert abs(normalized_hsic(X, Y, kernel)) < 0.05, (n, d, kernel)


def test_hsic_matches_the_trace_form_on_centred_data_up_to_bias():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(400, 8, generator=g)
    K = gram(X)
    assert hsic(K, K) > 0
    assert abs(hsic(K, gram(torch.randn(400, 8, generator=g)))) < 0.05 * hsic(K, K)


def test_rates_average_to_the_target_within_one_weight_per_layer():
    sizes = [1000, 1000, 1003, 997, 1000, 1001]
    rng = np.random.default_rng(0)
    importance = rng.uniform(0.9, 1.0, len(sizes))
    target, delta = 0.7, 0.03
    rates = rmi_sparsity(importance, sizes, target, delta)
    pruned = sum(r * n for r, n in zip(rates, sizes))
    assert abs(pruned - target * sum(sizes)) <= len(sizes)
    assert all(target - delta - 1e-9 <= r <= target + delta + 1e-9 for r in rates)
    assert all(abs(r * n - round(r * n)) < 1e-6 for r, n in zip(rates, sizes))  # whole weights
    # corrected Eq. 5: the most important layer gets the lowest rate, the least important the highest
    one = 1 / min(sizes)  # rounding to whole weights moves a rate by less than one weight
    assert rates[int(np.argmax(importance))] <= min(rates) + one
    assert rates[int(np.argmin(importance))] >= max(rates) - one


def test_redundant_layers_are_less_important():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(300, 16, generator=g)
    twin = base + 0.01 * torch.randn(300, 16, generator=g)
    other = torch.randn(300, 16, generator=g)
    importance = layer_importance(similarity_matrix([base, twin, other]))
    assert importance[2] > importance[0] and importance[2] > importance[1]


def test_a_layer_never_gets_less_sparse_than_it_is():
    """Pruned weights cannot come back: the current sparsity is a floor, the others make up the mean."""
    sizes = [1000] * 4
    importance = np.array([1.0, 0.9, 0.8, 0.7])  # layer 0 most important: would get the lowest rate
    current = [0.69, 0.0, 0.0, 0.0]  # but it is already 69% sparse
    rates = rmi_sparsity(importance, sizes, 0.7, 0.03, current)
    assert rates[0] >= 0.69 and abs(sum(rates) * 1000 - 0.7 * 4000) <= 4
    assert all(0.67 - 1e-9 <= r <= 0.73 + 1e-9 for r in rates)
