"""prunekit: make large language models sparse after training, keep their quality, save and run them.

    model, tokenizer = prunekit.load_model("smollm2-135m")
    result = prunekit.prune(model, prunekit.WandaConfig(sparsity=0.5, pattern="2:4"), calib=windows)
"""

__version__ = "0.1.0"

from .api import bos_id, calibration, evaluate, evaluation_sets, finetune, prune  # noqa: E402
from .engine import PruneResult  # noqa: E402
from .errors import UsageError  # noqa: E402
from .models import get_adapter, load_model  # noqa: E402
from .patterns import Pattern  # noqa: E402
from .methods import (LosaConfig, RotPrunerConfig, RotPrunerStructuredConfig, SliceGPTConfig,  # noqa: E402
                      WandaChannelsConfig)
from .pruners import FistaConfig, MagnitudeConfig, PruneConfig, RIAConfig, SparseGPTConfig, WandaConfig  # noqa: E402

__all__ = [
    "FistaConfig", "LosaConfig", "MagnitudeConfig", "Pattern", "PruneConfig", "PruneResult", "RIAConfig", "RotPrunerConfig",
    "RotPrunerStructuredConfig", "SliceGPTConfig", "SparseGPTConfig", "UsageError", "WandaChannelsConfig", "WandaConfig",
    "bos_id", "calibration", "evaluate", "evaluation_sets", "finetune", "get_adapter", "load_model", "prune",
]
