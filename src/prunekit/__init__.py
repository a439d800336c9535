"""prunekit: make large language models sparse after training, keep their quality, save and run them.

    model, tokenizer = prunekit.load_model("smollm2-135m")
    result = prunekit.prune(model, prunekit.WandaConfig(sparsity=0.5, pattern="2:4"), calib=windows)
    result.save("runs/wanda24")

After `import prunekit`, transformers' `AutoModelForCausalLM.from_pretrained` loads prunekit's compact directories
(hf_quantizer.py).
"""

from .api import bos_id, calibration, evaluate, evaluation_sets, finetune, prune
from .engine import PruneResult
from .errors import UsageError
from .hf_hook import register_with_transformers
from .load import load_model
from .methods import LosaConfig, RotPrunerConfig, RotPrunerStructuredConfig, SliceGPTConfig, WandaChannelsConfig
from .models import get_adapter
from .patterns import Pattern
from .pruners import FistaConfig, MagnitudeConfig, PruneConfig, RIAConfig, SparseGPTConfig, WandaConfig
from .quantize import FP8Config, quantize
from .version import __version__

register_with_transformers()

__all__ = [
    "FP8Config", "FistaConfig", "LosaConfig", "MagnitudeConfig", "Pattern", "PruneConfig", "PruneResult", "RIAConfig",
    "RotPrunerConfig", "RotPrunerStructuredConfig", "SliceGPTConfig", "SparseGPTConfig", "UsageError",
    "WandaChannelsConfig", "WandaConfig", "__version__", "bos_id", "calibration", "evaluate", "evaluation_sets",
    "finetune", "get_adapter", "load_model", "prune", "quantize",
]
