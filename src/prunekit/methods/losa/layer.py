"""The mask-aligned LoRA layer (LoSA Eq. 1): W' = W + ΔW with ΔW = s · (B A) ⊙ M.

M is the keep-mask of the pruned weight W, so W + ΔW has exactly W's zeros and merges into it:
the fine-tuned model is a plain sparse model. Without a mask this is ordinary LoRA (the dense-LoRA
baseline), which must stay unmerged to keep the base sparse.

Why not peft: peft's LoRA computes x Aᵀ Bᵀ, a low-rank path that cannot apply an elementwise mask
to B A without forking its layer code (what the authors did). Here the masked update is added to
the weight and the layer does one matmul with W + ΔW: the same cost as the frozen layer in the
forward pass, and no second full-size matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LosaLinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-r update, masked by the weight's non-zeros or not.

    The scaling s = α / r̄ is fixed when the layer is made (r̄: the average rank) and does not follow
    the layer's own rank: with α / r a rank change would rescale the update already learnt.
    """

    def __init__(self, base: nn.Linear, rank: int, scaling: float, masked: bool = True,
                 lora_A: torch.Tensor | None = None, lora_B: torch.Tensor | None = None):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scaling = scaling
        device = base.weight.device
        # M from the pruned weight as it is now, before any update is folded in or out of it
        self.register_buffer("mask", (base.weight != 0) if masked else None, persistent=False)
        if lora_A is None:
            lora_A = self._gaussian_rows(rank, device)
            lora_B = torch.zeros(base.out_features, rank, device=device)
        self.lora_A = nn.Parameter(lora_A.to(device, torch.float32))
        self.lora_B = nn.Parameter(lora_B.to(device, torch.float32))
        self.resize_rank(rank)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def _gaussian_rows(self, count: int, device) -> torch.Tensor:
        # N(0, 1/in): keeps the variance of A x equal to that of x, like Kaiming initialisation
        return torch.randn(count, self.base.in_features, device=device) / math.sqrt(self.base.in_features)

    @torch.no_grad()
    def resize_rank(self, rank: int) -> None:
        """Grow: append Gaussian rows to A and zero columns to B (B A, hence the output, is unchanged).
        Shrink: keep the leading rows of A and columns of B."""
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        r = self.rank
        if rank > r:
            A = torch.cat([self.lora_A.data, self._gaussian_rows(rank - r, self.lora_A.device)])
            B = torch.cat([self.lora_B.data, self.lora_B.new_zeros(self.lora_B.shape[0], rank - r)], dim=1)
        else:
            A, B = self.lora_A.data[:rank].clone(), self.lora_B.data[:, :rank].clone()
        self.lora_A, self.lora_B = nn.Parameter(A), nn.Parameter(B)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · (B A) ⊙ M (fp32). torch.where keeps +0.0 outside the mask."""
        delta = self.scaling * (self.lora_B @ self.lora_A)
        return delta if self.mask is None else torch.where(self.mask, delta, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            W = self.base.weight + self.delta_weight().to(self.base.weight.dtype)
            return F.linear(x, W, self.base.bias)
        update = F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return self.base(x) + (self.scaling * update).to(x.dtype)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Fold ΔW into the base weight and return the base layer; with a mask, zeros stay zeros."""
        W = self.base.weight
        W.copy_((W.float() + self.delta_weight()).to(W.dtype))
        return self.base

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ΔW out of the base weight: the layer's output is then what the base alone gave before."""
        W = self.base.weight
        W.copy_((W.float() - self.delta_weight()).to(W.dtype))
