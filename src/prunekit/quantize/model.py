"""quantize: a (pruned) model's linear layers to FP8, in place — the verb, and its config.

    prunekit.prune(model, SparseGPTConfig(pattern="2:4", quantize="fp8"), calib)  # pruned and held as FP8 (one pass)
    prunekit.quantize(model, FP8Config(), calib)   # a model any other pruner pruned: GPTQ, its zeros kept

Every linear operator of every decoder layer (the adapter's: those the pruners prune, less what `targets`/`ignore`
leave out) becomes a LinearFP8; the embeddings and the LM head stay as they are. SparseGPT's `quantize="fp8"` pass
leaves its weights on the FP8 grid, and rounding them to nearest (`FP8Config(compensate=False)`, what
prunekit.prune does after that pass) gives them back bit for bit (prunekit.quantize.fp8): only how they are held
changes. A model with FP8 layers is saved in the compact format (prunekit.export.save_compact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import UsageError
from ..models.adapters import get_adapter, operator_regexes, prunes
from ..pruners.base import check_numbers
from .linear import LinearFP8, check_activations, to_fp8_linear


@dataclass
class FP8Config:
    """FP8 (E4M3) weights with one power-of-two scale per output channel; `activations` "fp8" quantizes every
    token's inputs on the fly (per-token dynamic scales, W8A8), "none" keeps them in the model's dtype."""

    activations: str = field(default="fp8", metadata={"help": "fp8 (per-token dynamic, W8A8) or none (weights only)"})
    compensate: bool = field(default=True, metadata={
        "help": "GPTQ: round column by column, spreading each column's error over the later kept weights "
                "(needs calibration windows); off: round to nearest"})
    blocksize: int = field(default=128, metadata={"help": "GPTQ: columns per block of lazy updates", "min": 1})
    percdamp: float = field(default=0.01, metadata={"help": "GPTQ: Hessian damping, fraction of its mean diagonal",
                                                     "above": 0.0})
    #: which operators are quantized: the pruners' --targets/--ignore rule (prunekit.models.adapters.prunes)
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_activations(self.activations)
        check_numbers(self)
        self.targets = operator_regexes(self.targets, "targets")
        self.ignore = operator_regexes(self.ignore, "ignore")


@torch.no_grad()
def quantize(model: nn.Module, config: FP8Config | None = None, calib: torch.Tensor | None = None, *,
             device="cpu", batch_size: int = 8, progress: bool = True, offload="cpu"):
    """Quantize the decoder layers' linear operators of `model` to FP8 in place (see the module docstring).

    With `config.compensate`, GPTQ first runs layer by layer on the calibration windows `calib` [n, seqlen] (the
    engine's layer walk: each layer sees the inputs of the already quantized ones), keeping every zero; its
    PruneResult (per operator, ‖W X − Ŵ X‖² / ‖W X‖² on the first windows) is returned. Otherwise every weight
    is rounded to nearest and None is returned."""
    from ..layerwise import prune_layerwise
    from ..pruners.sparsegpt import GPTQConfig

    config = config or FP8Config()
    adapter = get_adapter(model)
    result = None
    if config.compensate:
        if calib is None:
            raise UsageError("FP8Config(compensate=True) needs calibration windows (calib=...): GPTQ spreads each "
                             "rounding error using their statistics; compensate=False rounds to nearest")
        if any(isinstance(op, LinearFP8) for layer in adapter.layers() for _, op in adapter.linears(layer)):
            raise UsageError("this model's linear layers are FP8 already: GPTQ needs the unquantized weights "
                             "(quantize with compensate=False to change only the activations)")
        gptq = GPTQConfig(blocksize=config.blocksize, percdamp=config.percdamp, targets=config.targets,
                          ignore=config.ignore)
        result = prune_layerwise(model, gptq, calib, device=device, batch_size=batch_size, progress=progress,
                                 offload=offload)
    for index, layer in enumerate(adapter.layers()):
        for name, op in adapter.linears(layer):
            if not prunes(config, f"{adapter.layer_prefix(index)}.{name}"):
                continue  # left in the model's dtype, like the pruners leave it dense
            parent, _, child = name.rpartition(".")
            fp8 = to_fp8_linear(op, config.activations)
            fp8.name = f"{adapter.layer_prefix(index)}.{name}"
            setattr(layer.get_submodule(parent) if parent else layer, child, fp8)
    return result
