"""Wanda (Sun et al., 2024, "A Simple and Effective Pruning Approach for LLMs")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LayerwiseConfig, ScorePruner


@dataclass
class WandaConfig(LayerwiseConfig):
    method = "wanda"
    summary = 'drop the smallest |W_ij|·‖X_j‖ of each output row'
    paper = 'Sun et al., 2024'

    def make_pruner(self, in_features, device):
        return WandaPruner(self, in_features, device)


class WandaPruner(ScorePruner):
    """Each output row is its own comparison group (Wanda §3)."""

    group = "row"

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """S_ij = |W_ij| · ||X_j||₂ (Wanda, Eq. 1)."""
        return weight.abs() * self.sq_norm.sqrt().unsqueeze(0)
