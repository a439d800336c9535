"""Magnitude pruning: drop the weights of smallest |W| (no calibration data needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LayerwiseConfig, ScorePruner


@dataclass
class MagnitudeConfig(LayerwiseConfig):
    method = "magnitude"
    summary = 'drop the smallest |W| of each matrix'
    paper = '—'
    needs_calibration = False

    def make_pruner(self, in_features, device):
        return MagnitudePruner(self, in_features, device)


class MagnitudePruner(ScorePruner):
    """Unstructured compares the whole matrix (the usual layer-wise baseline)."""

    uses_inputs = False
    group = "matrix"

    def add_batch(self, x: torch.Tensor) -> None:
        pass  # the rule reads only the weights

    def load_gram(self, G: torch.Tensor) -> None:
        pass

    def load_rotated_gram(self, G: torch.Tensor, Q: torch.Tensor) -> None:
        pass

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """S_ij = |W_ij|."""
        return weight.abs()
