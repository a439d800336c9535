"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play: An Efficient
Post-training Pruning Method for Large Language Models")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import LayerwiseConfig, ScorePruner


@dataclass
class RIAConfig(LayerwiseConfig):
    method = "ria"
    summary = 'drop the smallest (|W_ij|/Σ_row + |W_ij|/Σ_column)·‖X_j‖^a of each output row (`--power` a = 0.5)'
    paper = 'Zhang et al., ICLR 2024 (RIA)'
    power: float = field(default=0.5, metadata={"help": "exponent a of the input norm ‖X_j‖^a (the paper's 0.5)",
                                                 "min": 0.0})

    def make_pruner(self, in_features, device):
        return RIAPruner(self, in_features, device)


class RIAPruner(ScorePruner):
    """Compared within each output row, as the paper does for LLaMA."""

    group = "row"

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """S_ij = (|W_ij| / Σ_j |W_ij| + |W_ij| / Σ_i |W_ij|) · ‖X_j‖₂^a  (RIA, Eq. 2 and 3): a weight's share
        of its output row plus its share of its input column, times the input's norm to the power a."""
        W = weight.abs()
        relative = W / W.sum(dim=1, keepdim=True).clamp_min(1e-30) + W / W.sum(dim=0, keepdim=True).clamp_min(1e-30)
        return relative * self.sq_norm.sqrt().pow(self.config.power).unsqueeze(0)
