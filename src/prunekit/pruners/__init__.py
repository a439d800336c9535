"""Per-operator pruners by name: each module holds one, its config dataclass and its Pruner.

A pruner here is everything another method needs to reuse it (the engine, RotPruner, LoSA, per-layer
allocations): adding one is its file plus one entry in PRUNERS (or `register_pruner(Config)`).
Whole-model methods (rotations, fine-tuning, slicing) are registered in prunekit.methods.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import PruneConfig, Pruned, Pruner, ScorePruner
from .fista import FistaConfig
from .magnitude import MagnitudeConfig
from .ria import RIAConfig
from .sparsegpt import SparseGPTConfig
from .wanda import WandaConfig

PRUNERS: dict[str, type[PruneConfig]] = {
    cls.method: cls for cls in (MagnitudeConfig, WandaConfig, SparseGPTConfig, RIAConfig, FistaConfig)
}


def register_pruner(cls: type[PruneConfig]) -> type[PruneConfig]:
    """Add a pruner config (a PruneConfig with `method` and `make_pruner`) under its `method` name."""
    PRUNERS[cls.method] = cls
    return cls


def pruner_class(name: str) -> type[PruneConfig]:
    if name not in PRUNERS:
        raise UsageError(f"unknown pruner {name!r}: choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name]


__all__ = ["FistaConfig", "MagnitudeConfig", "PRUNERS", "PruneConfig", "Pruned", "Pruner", "RIAConfig",
           "ScorePruner", "SparseGPTConfig", "WandaConfig", "pruner_class", "register_pruner"]
