"""Rank allocation from the reconstruction error (LoSA §2.3, Eq. 7)."""

from __future__ import annotations

import numpy as np
import torch


def reconstruction_error(dense: torch.Tensor, sparse: torch.Tensor) -> float:
    """E_l = (1/d) Σ_c ‖Y_c − Ŷ_c‖² / ‖Y_c‖²: the sparse model's layer output Ŷ against the dense
    model's Y on the same tokens [n, d], each channel c normalised by its dense norm (the authors'
    form), so that no outlier channel dominates."""
    Y, Yh = dense.double(), sparse.double()
    norms = Y.pow(2).sum(dim=0).clamp_min(1e-12)
    return float(((Y - Yh).pow(2).sum(dim=0) / norms).mean())


def allocate_ranks(errors, mean_rank: float, min_rank: int = 1, max_rank: int = 16) -> list[int]:
    """Eq. 7: r_l ∝ E_l with Σ_l r_l = round(r̄ · L), each r_l in [min_rank, max_rank].

    Rounded by largest remainder: a missing unit goes to the layer furthest below its share, a
    surplus unit comes from the layer furthest above it, never crossing the clip bounds."""
    e = np.asarray(errors, dtype=np.float64)
    L = len(e)
    total = int(np.clip(round(mean_rank * L), min_rank * L, max_rank * L))
    share = e / e.sum() * total if e.sum() > 0 else np.full(L, total / L)
    ranks = np.clip(np.round(share), min_rank, max_rank).astype(int)
    while ranks.sum() < total:
        room = np.where(ranks < max_rank, share - ranks, -np.inf)
        ranks[int(np.argmax(room))] += 1
    while ranks.sum() > total:
        room = np.where(ranks > min_rank, share - ranks, np.inf)
        ranks[int(np.argmin(room))] -= 1
    return ranks.tolist()
