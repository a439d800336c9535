"""The fine-tuning loop: AdamW on the LoRA factors only, next-token loss on every token."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

MAX_GRAD_NORM = 0.3  # the authors' (QLoRA-style) clip
# linear warm-up then linear decay to 0, per stage; the authors warm up for 30% of each stage, we use 10%
# because reduced CPU budgets have few steps per stage and a long warm-up would spend them at low lr
WARMUP_FRACTION = 0.1


def finetune(model, params: list[torch.nn.Parameter], windows: torch.Tensor, *, lr: float, batch_size: int,
             device="cpu", progress: bool = True, desc: str = "fine-tuning") -> dict:
    """One pass over `windows` [N, seqlen] in batches; returns steps, tokens, seconds and the loss curve
    (mean loss of the first and last tenth of the steps)."""
    steps = math.ceil(len(windows) / batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: (k + 1) / warmup if k < warmup else max(0.0, (steps - k) / max(1, steps - warmup)))
    for p in model.parameters():  # only the factors train: no gradient buffers for the frozen model
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(windows.split(batch_size), desc=desc, disable=not progress, leave=False)
    for batch in bar:
        batch = batch.to(device)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    tenth = max(1, len(losses) // 10)
    return {"steps": steps, "tokens": int(windows.numel()), "seconds": time.perf_counter() - t0,
            "loss_first": sum(losses[:tenth]) / tenth if losses else None,
            "loss_last": sum(losses[-tenth:]) / tenth if losses else None, "loss": losses}
