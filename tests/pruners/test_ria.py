"""RIA against an independent NumPy implementation of the paper's score and per-row selection."""

import numpy as np
import torch

from prunekit.pruners import RIAConfig


def ria_reference(W: np.ndarray, X: np.ndarray, sparsity: float, a: float = 0.5) -> np.ndarray:
    """RIA (Zhang et al. 2024, Eq. 2–3): RI_ij = |W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|, score RI_ij·‖X_j‖₂^a;
    the lowest floor(in·sparsity) scores of every output row are pruned."""
    A = np.abs(W.astype(np.float64))
    ri = A / A.sum(axis=0, keepdims=True) + A / A.sum(axis=1, keepdims=True)
    score = ri * np.linalg.norm(X.astype(np.float64), axis=0) ** a
    out = W.copy()
    k = int(W.shape[1] * sparsity)
    for i in range(W.shape[0]):
        out[i, np.argsort(score[i], kind="stable")[:k]] = 0.0
    return out


def test_ria_matches_the_reference():
    torch.manual_seed(0)
    W, X = torch.randn(24, 40), torch.randn(300, 40) * torch.rand(40) * 4
    pruner = RIAConfig(sparsity=0.5).make_pruner(40, "cpu")
    for part in X.split(64):
        pruner.add_batch(part)
    got = pruner.prune(W).weight
    assert torch.equal(got != 0, torch.from_numpy(ria_reference(W.numpy(), X.numpy(), 0.5)) != 0)


def test_ria_is_not_wanda():
    """Row 0's largest weight (column 3) is a small share of its column, which row 1 dominates: RIA drops it
    where Wanda (|W|·‖X‖, equal input norms here) keeps it."""
    W = torch.tensor([[1.0, 1.2, 1.1, 1.3], [0.01, 0.02, 0.03, 0.9]])
    pruner = RIAConfig(sparsity=0.5).make_pruner(4, "cpu")
    pruner.add_batch(torch.ones(4, 4))
    assert pruner.mask(W)[0].tolist() == [False, True, True, False]
    assert (W[0].abs().argsort(descending=True)[:2].sort().values.tolist()) == [1, 3]  # Wanda's choice
