"""The base pruners' mask rules in the rotated space, and the straight-through estimators.

While Q is learned, every operator's mask M is recomputed at every step by its base pruner's rule on
the rotated weight W' (W Q for operators that read the residual stream, Qᵀ W for those that write to
it), with the statistics the base pruner would see in the rotated model. Those come from the dense
rotation-invariant model, G = Σ xᵀx over the operator's calibration inputs x: the inputs of stream
readers rotate with the stream (x → x Q, so G → Qᵀ G Q), the inputs of writers (attention output,
MLP activations) do not.

Each rule reproduces its pruner's selection exactly (tests/methods/test_rotpruner.py checks it
against the pruner's own `prune`): Wanda |W'_ij|·‖X'_j‖ per output row; magnitude |W'_ij| over the
matrix; SparseGPT without weight update W'_ij² / [U]_jj² (U the upper Cholesky factor of
(H + λI)⁻¹) per block of columns, or per N:M group.
"""

from __future__ import annotations

import torch

from ...patterns import keep_in_matrix, keep_n_of_m, select_mask
from ...pruners.base import PruneConfig

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


class MaskRule:
    """A base pruner's mask rule. `prepare(G)` reduces the statistics of inputs that do not rotate
    (once); `rotate(G, Q)` those of inputs that do (every step); `mask(W', state)` is the keep-mask."""

    needs_stats = True

    def __init__(self, base: PruneConfig):
        self.pattern, self.sparsity = base.pattern, base.sparsity

    def prepare(self, G: torch.Tensor):
        return None

    def rotate(self, G: torch.Tensor, Q: torch.Tensor):
        return self.prepare(Q.t() @ G @ Q)

    def mask(self, W: torch.Tensor, state) -> torch.Tensor:
        raise NotImplementedError


class MagnitudeRule(MaskRule):
    needs_stats = False

    def rotate(self, G, Q):
        return None

    def mask(self, W, state):
        return select_mask(W.abs(), self.pattern, self.sparsity, group="matrix")


class WandaRule(MaskRule):
    def prepare(self, G):
        return torch.diagonal(G).clamp_min(0).sqrt()

    def rotate(self, G, Q):
        # ‖X Q_j‖² = q_jᵀ G q_j: only the diagonal of Qᵀ G Q is needed
        return ((G @ Q) * Q).sum(0).clamp_min(0).sqrt()

    def mask(self, W, state):
        return select_mask(W.abs() * state.unsqueeze(0), self.pattern, self.sparsity, group="row")


class SparseGPTRule(MaskRule):
    """SparseGPT's mask (Frantar & Alistarh 2023, Alg. 1) without its weight reconstruction."""

    def __init__(self, base: PruneConfig):
        super().__init__(base)
        self.blocksize, self.percdamp = base.blocksize, base.percdamp

    def prepare(self, G):
        """(d, dead): d_j = [U]_jj for U the upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean diag(H).
        With J H J = L Lᵀ (J reverses the order), U = J L⁻¹ J, so d = reversed 1/diag(L)."""
        H = G.clone()
        dead = torch.diagonal(H) == 0
        H[dead, dead] = 1.0
        damp = self.percdamp * torch.mean(torch.diagonal(H))
        eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        for attempt in range(6):  # as SparseGPTPruner: raise the damping while H + λI is not positive definite
            L, info = torch.linalg.cholesky_ex((H + damp * 10**attempt * eye).flip(0, 1))
            if info == 0:
                return (1.0 / torch.diagonal(L)).flip(0), dead
        raise RuntimeError("SparseGPT: the damped Hessian is not positive definite; raise percdamp")

    def mask(self, W, state):
        d, dead = state
        scores = W.pow(2) / d.pow(2).unsqueeze(0)
        scores[:, dead] = 0.0  # SparseGPT zeroes the weights of inputs that never fire before choosing
        if self.pattern.is_nm:
            return keep_n_of_m(scores, self.pattern.n, self.pattern.m)
        keep = torch.empty_like(scores, dtype=torch.bool)
        for i1 in range(0, scores.shape[1], self.blocksize):
            i2 = min(i1 + self.blocksize, scores.shape[1])
            keep[:, i1:i2] = keep_in_matrix(scores[:, i1:i2], self.sparsity)
        return keep


def rule_for(base: PruneConfig) -> MaskRule:
    rules = {"magnitude": MagnitudeRule, "wanda": WandaRule, "sparsegpt": SparseGPTRule}
    if base.method not in rules:
        raise ValueError(f"no rotated-space mask rule for base pruner {base.method!r}")
    return rules[base.method](base)
