"""Wanda (Sun et al., 2024, "A Simple and Effective Pruning Approach for LLMs")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import select_mask
from .base import PruneConfig, Pruner


@dataclass
class WandaConfig(PruneConfig):
    method = "wanda"

    def make_pruner(self, in_features, device):
        return WandaPruner(self, in_features, device)


class WandaPruner(Pruner):
    def __init__(self, config, in_features, device):
        super().__init__(config, in_features, device)
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)  # ||X_j||² over tokens

    def add_batch(self, x: torch.Tensor) -> None:
        self.sq_norm += x.float().pow(2).sum(dim=0)

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """S_ij = |W_ij| · ||X_j||₂ (Wanda, Eq. 1)."""
        return weight.abs() * self.sq_norm.sqrt().unsqueeze(0)

    def prune(self, weight: torch.Tensor) -> torch.Tensor:
        """Each output row is its own comparison group (Wanda §3)."""
        keep = select_mask(self.scores(weight), self.config.pattern, self.config.sparsity, group="row")
        return weight.masked_fill(~keep, 0.0)  # +0.0, not the -0.0 that weight * mask gives
