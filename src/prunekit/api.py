"""The library's verbs: prune a model with a config, measure perplexity and zero-shot accuracy.
The CLI is a thin layer over these."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import data, methods
from .methods.losa.algorithm import finetune_pruned
from .artifact import PrunedModel, pruned_model
from .errors import UsageError
from .eval import zeroshot
from .eval.perplexity import perplexity
from .models.adapters import get_adapter
from .patterns import check_widths
from .pruners.base import PruneConfig
from .streaming import layer_store

BOS_MODES = ("auto", "always", "never")


def prune(model, config: PruneConfig, calib: torch.Tensor, *, device="cpu", batch_size: int = 8,
          progress: bool = True, checkpoint_dir=None, tokenizer=None, offload: str | None = None) -> PrunedModel:
    """Prune `model` in place: `config` says how (e.g. WandaConfig(sparsity=0.5, pattern="2:4")),
    `calib` holds the calibration windows as token ids [nsamples, seqlen]. Methods that fine-tune
    (LosaConfig) also need the `tokenizer` for their training text. `offload` (none, cpu, disk) says where the
    layers not being pruned wait; default: disk for a model loaded with `load_model(..., offload="disk")`,
    else cpu. The result reads like the method's PruneResult and `result.save(directory)` writes the model
    and report.json as the CLI does."""
    check_compatible(model, config)
    if offload is None:
        offload = "disk" if layer_store(model) is not None else "cpu"
    if offload == "cpu" and layer_store(model) is None:  # the layers wait in host memory, wherever the model was
        model.to("cpu")                                     # (e.g. on the GPU after a dense evaluation)
    return pruned_model(model, config, calib, lambda: methods.run(
        model, config, calib, device=device, batch_size=batch_size, progress=progress,
        checkpoint_dir=checkpoint_dir, tokenizer=tokenizer, offload=offload), tokenizer)


def check_compatible(model, config: PruneConfig) -> None:
    """Refuse at once what cannot work: an unsupported architecture, a --targets/--ignore regex that matches no
    operator, an N:M pattern whose M does not divide a pruned operator's width, a method that serves fewer
    architectures."""
    adapter = get_adapter(model)
    packed = [(f"{adapter.layer_prefix(i)}.{name}", type(op).__name__) for i, layer in enumerate(adapter.layers())
              for name, op in adapter.linears(layer) if not isinstance(op, torch.nn.Linear)]
    if packed:  # a pruner would read FP8 codes without their scales, or packed values as a weight
        raise UsageError(f"{packed[0][0]} is a {packed[0][1]} (a compact model's packed layer): prune a model with "
                         "plain linear layers, e.g. the dense original")
    if getattr(config, "quantize", "none") != "none" and layer_store(model) is not None:
        raise UsageError(f"--quantize {config.quantize} holds the weights as FP8 in memory, which a model streamed "
                         "from disk cannot: load it whole (--offload cpu)")
    dense = set(adapter.dense_operators(config))
    widths = {f"{adapter.layer_prefix(i)}.{name}": op.in_features
              for i, layer in enumerate(adapter.layers()) for name, op in adapter.linears(layer)}
    check_widths(config.pattern, {name: width for name, width in widths.items() if name not in dense})
    config.check_model(model)


def finetune(model, config, tokenizer, *, device="cpu", progress: bool = True):
    """Fine-tune an already pruned model in place with LoSA's mask-aligned LoRA (a LosaConfig gives the
    rank, α, learning rate, data and token budget) and merge it: the model keeps exactly its zeros."""
    return finetune_pruned(model, config, tokenizer, device=device, progress=progress)


def bos_id(model, tokenizer, mode: str = "auto") -> int | None:
    """The BOS id to put at the start of every window, or None: `auto` asks the model's adapter."""
    if mode not in BOS_MODES:
        raise UsageError(f"unknown BOS mode {mode!r}: choose one of {', '.join(BOS_MODES)}")
    wanted = mode == "always" or (mode == "auto" and get_adapter(model).needs_bos)
    if not wanted:
        return None
    if tokenizer.bos_token_id is None:
        raise UsageError("--eval-bos always: this tokenizer has no BOS token; use --eval-bos never")
    return int(tokenizer.bos_token_id)


def calibration(tokenizer, spec: str, nsamples: int, seqlen: int, seed: int, bos: int | None = None):
    """(windows [nsamples, seqlen], Text) for a calibration data name or path."""
    text = data.load_text(spec, "calibration")
    return data.calibration_windows(data.tokenize(tokenizer, text.text), nsamples, seqlen, seed, bos), text


def evaluation_sets(tokenizer, specs: list[str], seqlen: int, max_segments: int | None, bos: int | None = None):
    """{name: (windows, Text)} for each evaluation data name or path."""
    sets = {}
    for spec in specs:
        text = data.load_text(spec, "evaluation")
        sets[text.name] = (data.evaluation_windows(data.tokenize(tokenizer, text.text), seqlen, max_segments, bos),
                           text)
    return sets


def evaluate(model, sets: dict, device="cpu", batch_size: int = 1, bos: int | None = None,
             progress: bool = True) -> tuple[dict[str, float], float]:
    """({name: perplexity}, seconds) over prepared evaluation sets."""
    t0 = time.perf_counter()
    ppl = {name: perplexity(model, windows, device, batch_size, skip_first=int(bos is not None),
                            progress=progress, desc=f"perplexity {name}")
           for name, (windows, _) in sets.items()}
    return ppl, time.perf_counter() - t0


def split_tasks(specs: list[str]) -> tuple[list[str], list[str]]:
    """(perplexity data specs, zero-shot task names) from one list such as `wikitext2,c4,boolq,rte`.

    A perplexity set is a data name (pydoc, wikitext2, c4, ptb) or an existing text/JSONL file; a
    zero-shot task is one of `zeroshot.task_names()`. Anything else is a UsageError, before any work."""
    ppl, tasks = [], []
    known = zeroshot.task_names()
    for spec in specs:
        if spec in known:
            tasks.append(spec)
        elif spec in data.NAMES or Path(spec).expanduser().is_file():
            ppl.append(spec)
        elif "/" in spec or Path(spec).suffix:
            raise UsageError(f"data file {spec!r} not found: pass an existing text/JSONL file")
        else:
            raise UsageError(f"unknown task {spec!r}: perplexity on {', '.join(data.NAMES)} or a text/JSONL file, "
                             f"zero-shot on {', '.join(known)}")
    return ppl, tasks


def check_streamed_tasks(streamed: bool, tasks) -> None:
    """Zero-shot scoring runs the whole model at once: refused for a model streamed from disk."""
    if streamed and tasks:
        raise UsageError("zero-shot tasks need the whole model in memory: with --offload disk evaluate "
                         "perplexity only, or use --offload cpu")


def evaluate_suite(model, tokenizer, sets: dict, tasks: dict, *, device="cpu", batch_size: int = 1,
                   bos: int | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Perplexity on prepared `sets` (see evaluation_sets) and zero-shot accuracy on lm-eval `tasks`
    (see zeroshot.load_tasks), as one JSON-ready dict: {"ppl", "zero_shot", "zero_shot_mean", "seconds"}.

    Zero-shot prepends BOS exactly when perplexity does (`bos`), through lm-eval's `add_bos_token`."""
    streamed = layer_store(model) is not None
    check_streamed_tasks(streamed, tasks)
    if not streamed:  # a streamed model's layers come from disk one at a time
        model.to(device)  # pruning leaves the layers on the offload device (CPU)
    ppl, ppl_seconds = evaluate(model, sets, device, batch_size, bos, progress) if sets else ({}, 0.0)
    out = {"ppl": ppl, "zero_shot": {}, "zero_shot_mean": None, "seconds": {"ppl": ppl_seconds}}
    if tasks:
        t0 = time.perf_counter()
        scores = zeroshot.zero_shot(model, tokenizer, tasks, batch_size=batch_size, limit=limit,
                                    add_bos_token=bos is not None, progress=progress)
        out["zero_shot"] = {name: score.as_dict() for name, score in scores.items()}
        out["zero_shot_mean"] = {"metric": zeroshot.MEAN_METRIC, "value": zeroshot.mean_accuracy(scores),
                                 "tasks": list(scores)}
        out["seconds"]["zero_shot"] = time.perf_counter() - t0
    return out
