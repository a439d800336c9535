"""What a pruning run leaves: the model in its save format and `report.json`. `prunekit.prune` returns a
PrunedModel whose `save(directory)` writes exactly the files `prunekit prune --output` writes: the CLI
adds only what it alone knows (where the data came from, the evaluations) through `report_extra`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .engine import PruneResult
from .eval.plots import draw_layers
from .errors import UsageError
from .export import save_compact, save_sliced
from .methods.slicegpt.layers import is_sliced, parameter_count
from .models.adapters import get_adapter
from .outputs import atomic_output_dir, check_finite_weights, check_output_dir, writing
from .pruners.base import PruneConfig
from .streaming import layer_store
from .version import __version__

SAVE_FORMATS = ("hf", "compact")


@dataclass
class PrunedModel:
    """The model `prunekit.prune` pruned in place, its config and the method's PruneResult, whose attributes
    (operators, timings, details, achieved_sparsity) read through."""

    model: nn.Module
    config: PruneConfig
    result: PruneResult
    tokenizer: object = None
    calibration: dict = field(default_factory=dict)  # {"nsamples", "seqlen"} of the windows used
    parameters: dict = field(default_factory=dict)  # {"before", "after"}: distinct parameters
    seconds: float = 0.0

    def __getattr__(self, name):
        if name == "result":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.result, name)

    @property
    def structure(self) -> dict | None:
        """What a structured method removed (None for a sparse pattern): the slicing fraction of the hidden
        width (slicegpt, rotpruner-structured) or the fraction of MLP channels (wanda-channels)."""
        removes = self.config.removes
        if removes is None:
            return None
        target = getattr(self.config, removes)
        before, after = self.parameters["before"], self.parameters["after"]
        return {"removes": removes, "target": target, "parameters_removed": 1 - after / before if before else 0.0}

    def report(self, extra: dict | None = None) -> dict:
        """report.json: the method, pattern, sparsity or structure, config, parameters, timings and every
        operator's record; `extra`'s keys are added (dicts merged one level deep)."""
        structure = self.structure
        report = {
            "prunekit_version": __version__,
            "method": self.config.method,
            "pattern": "structured" if structure else str(self.config.pattern),
            "target_sparsity": None if structure else self.config.sparsity,
            "achieved_sparsity": None if structure else self.result.achieved_sparsity,
            **({"structured": structure} if structure else {}),
            "config": {**dataclasses.asdict(self.config), "pattern": str(self.config.pattern)},
            "calibration": dict(self.calibration),
            "parameters": dict(self.parameters),
            "timings": {**self.result.timings, "prune_total": self.seconds},
            "layers": [dataclasses.asdict(op) for op in self.result.operators],
        }
        if self.result.details:
            report["details"] = self.result.details
        if hasattr(self.config, "ignore"):  # a layer-wise pruner: the operators its --targets/--ignore left dense
            report["ignored_operators"] = get_adapter(self.model).dense_operators(self.config)
        for key, value in (extra or {}).items():
            report[key] = {**report[key], **value} if isinstance(report.get(key), dict) and isinstance(value, dict) \
                else value
        return report

    def write(self, folder: str | Path, save_format: str = "hf", report_extra: dict | None = None,
              hint: str = "", recipe: str | None = None) -> dict:
        """Write the model, report.json and layers.png (prunekit.eval.plots) into the existing folder `folder`,
        and `recipe` (prunekit.recipe's text of the run) as recipe.yaml; returns the report. A model with NaN/Inf
        weights is refused before anything is written."""
        store = layer_store(self.model)
        check_save_format(self.config, save_format, streamed=store is not None)
        check_finite_weights(self.model)
        folder = Path(folder)
        report = self.report(report_extra)
        with writing(folder, hint):
            if extra := self.result.before_save(self.model, folder):
                report["saved_extra"] = extra
            if store is not None:  # pruned layers already on disk: moved in, the rest and the index written
                report["saved"] = store.save(folder)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(folder)
            elif is_sliced(self.model):
                report["saved"] = save_sliced(self.model, folder, self.tokenizer)
            elif save_format == "compact":
                report["saved"] = {"format": "compact", **save_compact(self.model, folder, self.tokenizer)}
            else:
                self.model.save_pretrained(folder)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(folder)
                report["saved"] = {"format": "hf"}
            (folder / "report.json").write_text(json.dumps(report, indent=2))
            if recipe is not None:
                (folder / "recipe.yaml").write_text(recipe)
            draw_layers(report, folder / "layers.png")
        return report

    def save(self, directory: str | Path, save_format: str = "hf", overwrite: bool = False,
             report_extra: dict | None = None) -> dict:
        """Write the model and report.json to `directory` atomically (a temporary folder renamed at the end;
        an existing `directory` only with `overwrite`, and only a prunekit output); returns the report."""
        check_save_format(self.config, save_format)
        check_output_dir(directory, overwrite)
        with atomic_output_dir(directory, overwrite) as tmp:
            return self.write(tmp, save_format, report_extra)


def check_save_format(config: PruneConfig, save_format: str, streamed: bool = False) -> None:
    quantize = getattr(config, "quantize", "none")
    if streamed and quantize != "none":
        raise UsageError(f"--quantize {quantize} saves in the compact format, which a model streamed from disk "
                         "cannot use: prune with --offload cpu")
    if streamed and save_format != "hf":
        raise UsageError("a model streamed from disk (--offload disk) is saved in the Hugging Face format: drop "
                         "--save-format compact, or prune with --offload cpu")
    if save_format not in SAVE_FORMATS:
        raise UsageError(f"unknown save format {save_format!r}: choose one of {', '.join(SAVE_FORMATS)}")
    if quantize != "none" and save_format != "compact":
        raise UsageError(f"--quantize {quantize} makes FP8 weights, which only the compact format stores: add "
                         "--save-format compact")
    if save_format == "compact" and getattr(config, "residual_rotations", "none") != "none":
        raise UsageError(f"--residual-rotations {config.residual_rotations} keeps dense d x d products that the compact "
                         "format does not store: drop --save-format compact (the Hugging Face format reloads them)")
    if save_format == "compact" and config.removes == "slicing":
        raise UsageError(f"--method {config.method} saves a sliced model (its own format): drop --save-format compact")


def pruned_model(model, config: PruneConfig, calib: torch.Tensor, run, tokenizer=None) -> PrunedModel:
    """Run `run()` (the method on `model`) and wrap its PruneResult with what `save` needs."""
    before = parameter_count(model)
    t0 = time.perf_counter()
    result = run()
    after = parameter_count(model)  # FP8 layers hold their weights as buffers: counted before
    if getattr(config, "quantize", "none") == "fp8":  # the pass left the weights on the FP8 grid: hold them as FP8
        from .quantize import FP8Config, quantize
        quantize(model, FP8Config(compensate=False, targets=config.targets, ignore=config.ignore))
    return PrunedModel(model, config, result, tokenizer,
                       calibration={"nsamples": int(calib.shape[0]), "seqlen": int(calib.shape[1])},
                       parameters={"before": before, "after": after},
                       seconds=time.perf_counter() - t0)
