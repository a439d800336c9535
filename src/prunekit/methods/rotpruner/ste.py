"""Straight-through estimators: how the loss's gradient passes through a pruning mask to the rotation.

While Q is learned, every operator's mask M is chosen afresh at every step by its base pruner's own
selection (`Pruner.mask`) on the rotated weight W' (W Q for operators that read the residual stream, Qᵀ W
for those that write to it), with the statistics the base pruner would see in the rotated model; M itself
has no gradient, so the weight's gradient is passed through as below.
"""

from __future__ import annotations

import torch

STE_MODES = ("sr-ste", "ste", "none")


class _MaskedWeight(torch.autograd.Function):
    """Forward W̃ = M ⊙ W. Backward, for the gradient g of W̃:
    'none'   M ⊙ g                 (the mask is a constant; pruned weights get no gradient)
    'ste'    g                     (straight-through: as if the weight were dense)
    'sr-ste' g + λ (1 − M) ⊙ W     (sparse-refined STE, Zhou et al. 2021: also decays pruned weights,
                                    which here pushes Q towards rotations whose pruned part is small)"""

    @staticmethod
    def forward(ctx, W, M, mode: str, decay: float):
        ctx.save_for_backward(W, M)
        ctx.mode, ctx.decay = mode, decay
        return W * M

    @staticmethod
    def backward(ctx, g):
        W, M = ctx.saved_tensors
        if ctx.mode == "none":
            return g * M, None, None, None
        if ctx.mode == "sr-ste" and ctx.decay:
            g = g + ctx.decay * (~M) * W
        return g, None, None, None


def masked(W: torch.Tensor, M: torch.Tensor, mode: str = "sr-ste", decay: float = 2e-4) -> torch.Tensor:
    return _MaskedWeight.apply(W, M, mode, decay)
