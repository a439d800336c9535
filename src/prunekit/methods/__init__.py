"""Every method by name, and what each supports: the per-operator pruners (prunekit.pruners, run by the
layer-wise loop) and the whole-model methods, one folder each, split like peft: `config.py` (what the user
sets), the math, and how it attaches to a model.

`prunekit.prune`, the CLI's --method choices and flags, and the error for an unsupported combination all
read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..allocation import sensitivity
from ..errors import UsageError
from ..layerwise import prune_layerwise
from ..streaming import layer_store
from ..pruners import PRUNERS, PruneConfig
from ..pruners.wanda_channels import WandaChannelsConfig, prune_channels
from .losa.algorithm import losa as run_losa
from .losa.config import LosaConfig
from .rotpruner.attach import rotprune
from .rotpruner.config import RotPrunerConfig
from .slicegpt.attach import slicegpt as run_slicegpt
from .slicegpt.config import RotPrunerStructuredConfig, SliceGPTConfig


@dataclass(frozen=True)
class Method:
    """A method: its config class, the function that runs it — run(model, config, calib, *, device,
    batch_size, progress, checkpoint_dir[, tokenizer]) -> PruneResult — and what it supports."""

    config: type[PruneConfig]
    run: Callable
    checkpoint: bool = True  # --checkpoint-dir: progress saved, a rerun resumes
    tokenizer: bool = False  # fine-tunes on text, so it needs the tokenizer
    offload: tuple[str, ...] = ("cpu",)  # where the layers not being worked on may wait (--offload)


#: --offload choices: the device itself, host memory, or the model's files on disk (prunekit.streaming)
OFFLOADS = ("none", "cpu", "disk")


WHOLE_MODEL: dict[str, Method] = {m.config.method: m for m in (
    Method(RotPrunerConfig, rotprune),
    Method(LosaConfig, run_losa, tokenizer=True),
    Method(SliceGPTConfig, run_slicegpt),
    Method(RotPrunerStructuredConfig, run_slicegpt),
    Method(WandaChannelsConfig, prune_channels, checkpoint=False),
)}


def method(name: str) -> Method:
    """The registered method `name`: a pruner (run layer by layer) or a whole-model method."""
    if name in PRUNERS:
        return Method(PRUNERS[name], prune_layerwise, offload=OFFLOADS)
    if name in WHOLE_MODEL:
        return WHOLE_MODEL[name]
    raise UsageError(f"unknown method {name!r}: choose one of {', '.join(method_configs())}")


def method_configs() -> dict[str, type[PruneConfig]]:
    """Every method's config class by name: the pruners first, then the whole-model methods."""
    return {**PRUNERS, **{name: m.config for name, m in WHOLE_MODEL.items()}}


def method_table() -> str:
    """README's method table: one row per registered method, from its config's `summary` and `paper`."""
    rows = ["| method | what it does | paper |", "|---|---|---|"]
    for name, cls in method_configs().items():
        cells = [f"`{name}`", cls.summary, cls.paper or "—"]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def config_class(name: str) -> type[PruneConfig]:
    return method(name).config


def check_options(config: PruneConfig, checkpoint_dir=None, offload: str = "cpu") -> Method:
    """The method of `config`, or a UsageError naming an option it does not support."""
    found = method(config.method)
    if checkpoint_dir and not found.checkpoint:
        raise UsageError(f"--checkpoint-dir is not supported by --method {config.method}")
    if offload not in OFFLOADS:
        raise UsageError(f"unknown --offload {offload!r}: choose one of {', '.join(OFFLOADS)}")
    if offload not in found.offload:
        raise UsageError(f"--offload {offload} is not supported by --method {config.method} (it takes the whole "
                         f"model: use --offload {' or '.join(found.offload)})")
    if offload == "disk" and getattr(config, "parallel_layers", False):
        raise UsageError("--offload disk cannot be combined with --parallel-layers: use --offload cpu")
    if offload == "disk" and getattr(config, "layer_sparsity", "uniform") in ("sensitivity", "sensitivity-blocks"):
        raise UsageError(sensitivity.NEEDS_MEMORY)
    return found


def run(model, config: PruneConfig, calib, *, device="cpu", batch_size: int = 8, progress: bool = True,
        checkpoint_dir=None, tokenizer=None, offload: str = "cpu"):
    """Run `config`'s method on `model` in place; returns its PruneResult. `offload` (OFFLOADS) says where
    layers wait while another is pruned: "disk" needs a model loaded with `load_model(..., offload="disk")`."""
    found = check_options(config, checkpoint_dir, offload)
    if (offload == "disk") != (layer_store(model) is not None):
        raise UsageError("--offload disk needs the model loaded from disk layer by layer (load_model(path, "
                         "offload='disk')), and such a model needs --offload disk")
    options = {"tokenizer": tokenizer} if found.tokenizer else {}
    if len(found.offload) > 1:
        options["offload"] = device if offload == "none" else "cpu"  # disk: layers go to disk via the host
    return found.run(model, config, calib, device=device, batch_size=batch_size, progress=progress,
                     checkpoint_dir=checkpoint_dir, **options)


__all__ = ["OFFLOADS", "LosaConfig", "Method", "RotPrunerConfig", "RotPrunerStructuredConfig", "SliceGPTConfig", "WHOLE_MODEL",
           "WandaChannelsConfig", "check_options", "config_class", "method", "method_configs", "run"]
