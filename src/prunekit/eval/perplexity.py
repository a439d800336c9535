"""Perplexity with the SparseGPT/Wanda protocol: the text tokenized once, cut into non-overlapping
windows, exp of the mean next-token negative log-likelihood over all scored tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..engine import LayerWalk, on_device
from ..streaming import layer_store


#: most logits (elements) one forward pass may produce: 2^30 fp32 values = 4 GiB
MAX_LOGITS = 2**30


def windows_per_pass(model, windows: torch.Tensor, batch_size: int) -> int:
    """`batch_size`, lowered so that a pass's logits [windows, seqlen, vocab] stay under MAX_LOGITS
    (Gemma 3's 262k vocabulary: 4 windows of 1024 tokens, where 32 would need 32 GiB)."""
    head = model.get_output_embeddings()
    vocab = getattr(head, "out_features", None) or model.config.get_text_config().vocab_size
    return max(1, min(batch_size, MAX_LOGITS // (windows.shape[1] * vocab)))


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device="cpu", batch_size: int = 1, skip_first: int = 0,
               progress: bool = True, desc: str = "perplexity") -> float:
    """exp(mean NLL) of predicting token t+1 from tokens ≤ t in every window.

    `skip_first` = 1 when each window starts with an added BOS: the first text token, predicted from
    BOS alone, is then not scored ("the loss is taken over the text tokens after the first").
    `batch_size` windows per forward pass at most (fewer where the logits would pass MAX_LOGITS).
    """
    if layer_store(model) is not None:
        return streamed_perplexity(model, windows, device, batch_size, skip_first, progress, desc)
    nll, count = 0.0, 0
    batch_size = windows_per_pass(model, windows, batch_size)
    for batch in tqdm(windows.split(batch_size), desc=desc, disable=not progress, leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, skip_first:-1].float()
        labels = batch[:, skip_first + 1:]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum").item()
        count += labels.numel()
    return math.exp(nll / count)


@torch.no_grad()
def streamed_perplexity(model, windows: torch.Tensor, device="cpu", batch_size: int = 1, skip_first: int = 0,
                        progress: bool = True, desc: str = "perplexity") -> float:
    """perplexity() of a streamed model (prunekit.streaming): the windows go through the decoder layers one
    layer at a time, each read from disk, then through the final norm and the head."""
    walk = LayerWalk(model, windows, device=device, batch_size=batch_size, progress=progress, desc=desc,
                     read_only=True)
    for _, layer, kwargs in walk:
        walk.forward(layer, kwargs, out=walk.hidden)
    nll, count = head_nll(model, walk.adapter, walk.hidden, windows, device, walk.offload, batch_size, skip_first)
    return math.exp(nll / count)


@torch.no_grad()
def head_nll(model, adapter, hidden: torch.Tensor, windows: torch.Tensor, device="cpu", offload="cpu",
             batch_size: int = 1, skip_first: int = 0) -> tuple[float, int]:
    """(Σ next-token NLL, tokens scored) of `windows` from the last decoder layer's outputs `hidden` [windows,
    seqlen, dim], through the final norm and the head (with the model's final logit soft-capping)."""
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    nll, count = 0.0, 0
    norm = model.get_submodule(adapter.final_norm_path)
    with on_device(norm, device, offload), on_device(model.get_output_embeddings(), device, offload) as head:
        step = windows_per_pass(model, windows, batch_size)
        for start in range(0, windows.shape[0], step):
            logits = head(norm(hidden[start:start + step].to(device)))[:, skip_first:-1].float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            labels = windows[start:start + step, skip_first + 1:].to(device)
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum").item()
            count += labels.numel()
    return nll, count
