"""Outlier-weighed layerwise sparsity (OWL; Yin et al., ICML 2024): layers that hold more outlier weights are
pruned less.

A weight's outlier score is Wanda's |W_ij| · ‖X_j‖₂ on the dense model's calibration inputs; a layer's outlier
ratio D_l is the share of its scores (all its operators pooled) above M × the layer's mean score (paper:
M = 5–10). The rates are an affine map of D, decreasing in D, centred so that the average over all pruned
weights is the target s and scaled as far as the bounds [s − λ, s + λ] ∩ [0, 1] allow (paper: λ = 0.08):

    t_l = 1 − 2 (D_l − min D) / (max D − min D),   t_l ← t_l − Σ_k n_k t_k / Σ_k n_k,   x_l = s + c t_l,
    c = min((hi − s) / max_k t_k, (s − lo) / max_k (−t_k))
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import LayerWalk
from .rounding import whole_weight_rates


@torch.no_grad()
def outlier_ratios(model, calib: torch.Tensor, M: float, *, device="cpu", offload="cpu", batch_size: int = 8,
                   progress: bool = True) -> list[float]:
    """D_l for every decoder layer, from one dense pass over the calibration windows."""
    walk = LayerWalk(model, calib, device=device, offload=offload, batch_size=batch_size, progress=progress,
                     desc="OWL outlier ratios", read_only=True)
    ratios = []
    for _, layer, kwargs in walk:
        groups = walk.adapter.linear_groups(layer)
        norms = group_input_norms(walk, layer, kwargs, groups)
        scores = torch.cat([(op.weight.float().abs() * norms[g]).flatten()
                            for g, group in enumerate(groups) for _, op in group])
        ratios.append(float((scores > M * scores.mean()).double().mean()))
    return ratios


def group_input_norms(walk: LayerWalk, layer, kwargs: dict, groups) -> list[torch.Tensor]:
    """‖X_j‖₂ over every calibration token of each group's input feature j (Wanda's norm), from one dense pass of
    `layer` that also advances `walk.hidden` to the layer's outputs (the next layer's inputs)."""
    sq_norms = [torch.zeros(group[0][1].in_features, dtype=torch.float32, device=walk.device) for group in groups]

    def collect(g):
        def hook(module, args):
            x = args[0]
            sq_norms[g].add_(x.reshape(-1, x.shape[-1]).float().pow(2).sum(0))
        return hook

    handles = [group[0][1].register_forward_pre_hook(collect(g)) for g, group in enumerate(groups)]
    try:
        walk.forward(layer, kwargs, out=walk.hidden)
    finally:
        for handle in handles:
            handle.remove()
    return [sq.sqrt() for sq in sq_norms]


def owl_rates(ratios: list[float], sizes: list[int], target: float, lam: float) -> list[float]:
    """Per-layer sparsity from the outlier ratios (module docstring), rounded to whole weights: Σ_l n_l x_l =
    round(s Σ_l n_l) and s − λ ≤ x_l ≤ s + λ (to one weight of the layer)."""
    D, n = np.asarray(ratios, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    lo = np.full(len(D), max(0.0, target - lam))
    hi = np.full(len(D), min(1.0, target + lam))
    if D.max() == D.min() or lam == 0:
        return whole_weight_rates(np.full(len(D), target), n, target, lo, hi)
    t = 1 - 2 * (D - D.min()) / (D.max() - D.min())
    t -= (n @ t) / n.sum()
    c = min((hi[0] - target) / t.max(), (target - lo[0]) / (-t).max())
    return whole_weight_rates(np.clip(target + c * t, lo, hi), n, target, lo, hi)
