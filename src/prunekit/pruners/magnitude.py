"""Magnitude pruning: drop the weights of smallest |W| (no calibration data needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import select_mask
from .base import PruneConfig, Pruner


@dataclass
class MagnitudeConfig(PruneConfig):
    method = "magnitude"
    needs_calibration = False

    def make_pruner(self, in_features, device):
        return MagnitudePruner(self, in_features, device)


class MagnitudePruner(Pruner):
    def prune(self, weight: torch.Tensor) -> torch.Tensor:
        """Score |W_ij|; unstructured compares the whole matrix (the usual layer-wise baseline)."""
        mask = select_mask(weight.abs(), self.config.pattern, self.config.sparsity, group="matrix")
        return weight.masked_fill(~mask, 0.0)
