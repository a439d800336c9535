"""The library's verbs: prune a model with a config, and measure perplexity. The CLI is a thin layer over these."""

from __future__ import annotations

import time

import torch

from . import data
from .engine import PruneResult
from .errors import UsageError
from .eval.perplexity import perplexity
from .models.adapters import get_adapter
from .pruners.base import PruneConfig

BOS_MODES = ("auto", "always", "never")


def prune(model, config: PruneConfig, calib: torch.Tensor, *, device="cpu", batch_size: int = 8,
          progress: bool = True, checkpoint_dir=None, tokenizer=None) -> PruneResult:
    """Prune `model` in place: `config` says how (e.g. WandaConfig(sparsity=0.5, pattern="2:4")),
    `calib` holds the calibration windows as token ids [nsamples, seqlen]. Methods that fine-tune
    (LosaConfig) also need the `tokenizer` for their training text."""
    return config.apply(model, calib, device=device, batch_size=batch_size, progress=progress,
                        checkpoint_dir=checkpoint_dir, tokenizer=tokenizer)


def finetune(model, config, tokenizer, *, device="cpu", progress: bool = True):
    """Fine-tune an already pruned model in place with LoSA's mask-aligned LoRA (a LosaConfig gives the
    rank, α, learning rate, data and token budget) and merge it: the model keeps exactly its zeros."""
    from .methods.losa.algorithm import finetune_pruned

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
