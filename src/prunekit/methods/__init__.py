"""Every method by name: the per-operator pruners (prunekit.pruners) and the whole-model methods, one folder
each, split like peft: `config.py` (what the user sets), the math, and how it attaches to a model.

The CLI's --method choices, its flags and `prunekit.prune` all read `method_configs()`.
"""

from __future__ import annotations

from ..errors import UsageError
from ..pruners import PRUNERS, PruneConfig
from ..pruners.wanda_channels import WandaChannelsConfig
from .losa.config import LosaConfig
from .rotpruner.config import RotPrunerConfig
from .slicegpt.config import RotPrunerStructuredConfig, SliceGPTConfig

WHOLE_MODEL: dict[str, type[PruneConfig]] = {
    cls.method: cls for cls in (RotPrunerConfig, WandaChannelsConfig, LosaConfig, SliceGPTConfig,
                                RotPrunerStructuredConfig)
}


def method_configs() -> dict[str, type[PruneConfig]]:
    """Every method's config class by name: the pruners first, then the whole-model methods."""
    return {**PRUNERS, **WHOLE_MODEL}


def config_class(method: str) -> type[PruneConfig]:
    configs = method_configs()
    if method not in configs:
        raise UsageError(f"unknown method {method!r}: choose one of {', '.join(configs)}")
    return configs[method]


__all__ = ["LosaConfig", "RotPrunerConfig", "RotPrunerStructuredConfig", "SliceGPTConfig", "WHOLE_MODEL",
           "WandaChannelsConfig", "config_class", "method_configs"]
