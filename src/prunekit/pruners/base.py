"""The pruner interface: one small class per method.

One Pruner instance serves a group of operators that read the same input (q/k/v; gate/up): the
engine feeds the group's calibration inputs to `add_batch` once, then calls `prune` with each
operator's dense weight; `prune` returns the pruned weight (zeros in place) and leaves the
statistics untouched. A method is a config dataclass
(what the user sets, validated at construction) plus its Pruner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..patterns import Pattern, check_sparsity


@dataclass
class PruneConfig:
    """Target sparsity and pattern shared by every pruner. `pattern` is 'unstructured' or 'N:M'."""

    sparsity: float = 0.5
    pattern: Pattern | str = "unstructured"
    method: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        self.pattern = self.pattern if isinstance(self.pattern, Pattern) else Pattern.parse(self.pattern)
        self.sparsity = check_sparsity(self.pattern.sparsity(self.sparsity))

    def make_pruner(self, in_features: int, device: torch.device) -> "Pruner":
        raise NotImplementedError

    def apply(self, model, calib: torch.Tensor, **engine_options):
        """Prune the whole model in place and return a PruneResult. Per-operator methods run the
        layer-wise engine; whole-model methods (rotations, fine-tuning) override this."""
        from ..engine import prune_layerwise

        engine_options.pop("tokenizer", None)  # only methods that fine-tune need it
        return prune_layerwise(model, self, calib, **engine_options)


class Pruner:
    """Statistics of one operator's inputs, and the rule that prunes its weight from them."""

    #: what the last `prune` call wants logged for its operator in report.json (None: nothing)
    extra: dict | None = None

    def __init__(self, config: PruneConfig, in_features: int, device: torch.device):
        self.config = config
        self.in_features = in_features
        self.device = device

    def add_batch(self, x: torch.Tensor) -> None:
        """Accumulate statistics of a batch of inputs x [tokens, in] (in fp32)."""

    def prune(self, weight: torch.Tensor) -> torch.Tensor:
        """The pruned weight (out × in, fp32) for the dense `weight`."""
        raise NotImplementedError
