"""The pruner interface: one small class per method.

One Pruner instance serves a group of operators that read the same input (q/k/v; gate/up): the
engine feeds the group's calibration inputs to `add_batch` once, then calls `prune` with each
operator's dense weight; `prune` returns the pruned weight (zeros in place) and leaves the
statistics untouched. A method is a config dataclass
(what the user sets, validated at construction) plus its Pruner.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..patterns import Pattern, check_sparsity

UNSTRUCTURED_DEFAULT = 0.5


@dataclass
class PruneConfig:
    """Target sparsity and pattern shared by every pruner. `pattern` is 'unstructured' or 'N:M'.

    `sparsity` is the fraction of zeros; left as None it is 0.5 (unstructured) or the pattern's 1 − N/M.
    Every numeric field of every config is checked here: finite, and within the field's `min` / `above`
    (metadata), so a bad value fails at construction, before any model is loaded."""

    sparsity: float | None = None
    pattern: Pattern | str = "unstructured"
    method: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        self.pattern = self.pattern if isinstance(self.pattern, Pattern) else Pattern.parse(self.pattern)
        if self.pattern.is_nm:
            implied = self.pattern.sparsity(0.0)
            if self.sparsity is not None and abs(float(self.sparsity) - implied) > 1e-9:
                raise ValueError(f"--pattern {self.pattern} prunes {implied:.4g} of the weights, not --sparsity "
                                 f"{self.sparsity}: drop --sparsity (or choose an N:M with that fraction)")
            self.sparsity = implied
        elif self.sparsity is None:
            self.sparsity = UNSTRUCTURED_DEFAULT
        self.sparsity = check_sparsity(self.sparsity)
        check_numbers(self)

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


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a config field (`--field-name` unless its metadata names another)."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def check_numbers(config) -> None:
    """ValueError for a numeric field that is NaN/Inf or below its metadata's `min` (inclusive) or `above`
    (exclusive) bound."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = flag_name(f)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if "min" in f.metadata and value < f.metadata["min"]:
            raise ValueError(f"{name} must be >= {f.metadata['min']}, got {value}")
        if "above" in f.metadata and not value > f.metadata["above"]:
            raise ValueError(f"{name} must be > {f.metadata['above']}, got {value}")
