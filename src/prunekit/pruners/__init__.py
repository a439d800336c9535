"""Pruners by method name. Each module holds one method: its config dataclass and its Pruner."""

from __future__ import annotations

from ..errors import UsageError
from .base import PruneConfig, Pruner
from .fista import FistaConfig
from .magnitude import MagnitudeConfig
from .sparsegpt import SparseGPTConfig
from .wanda import WandaConfig
from .wanda_channels import WandaChannelsConfig
from ..methods.rotpruner.config import RotPrunerConfig  # noqa: E402  (whole-model methods build on the pruners)

CONFIGS: dict[str, type[PruneConfig]] = {
    cls.method: cls for cls in (MagnitudeConfig, WandaConfig, SparseGPTConfig, FistaConfig, RotPrunerConfig,
                                WandaChannelsConfig)
}

from ..methods.losa.config import LosaConfig  # noqa: E402  (whole-model method; imports .base above)

CONFIGS[LosaConfig.method] = LosaConfig

from ..methods.slicegpt.config import RotPrunerStructuredConfig, SliceGPTConfig  # noqa: E402  (whole-model)

CONFIGS[SliceGPTConfig.method] = SliceGPTConfig
CONFIGS[RotPrunerStructuredConfig.method] = RotPrunerStructuredConfig


def config_class(method: str) -> type[PruneConfig]:
    if method not in CONFIGS:
        raise UsageError(f"unknown method {method!r}: choose one of {', '.join(CONFIGS)}")
    return CONFIGS[method]


__all__ = ["CONFIGS", "FistaConfig", "LosaConfig", "MagnitudeConfig", "PruneConfig", "Pruner", "RotPrunerConfig",
           "RotPrunerStructuredConfig", "SliceGPTConfig", "SparseGPTConfig", "WandaChannelsConfig", "WandaConfig", "config_class"]
