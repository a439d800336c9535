"""Learning Q (RotPruner, Algorithm 1): the pruned rotated model is trained to match the dense model.

    min_Q  kl_weight · KL(p_dense ‖ p_pruned(Q)) + mse_weight · ‖z(Q) − z_dense‖² / ‖z_dense‖²
    s.t.   Qᵀ Q = I

p are next-token distributions on the calibration windows, z the final hidden states (original basis).
At every step each operator's mask is chosen afresh by the base pruner's own selection (`Pruner.mask`) on
its rotated weight, with the rotated statistics (`Pruner.load_rotated_gram`); the loss is back-propagated to Q through a straight-through estimator, and Q takes a
Cayley step on the Stiefel manifold (rotation/stiefel.py). The original weights never change.

With residual rotations each rotated block's group g adds an A_g (identity at the start) to the same optimizer:
the block's operators are rotated, masked and their statistics rotated by R_b = Q A_g instead of Q.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...engine import OFFLOAD, LayerWalk, on_device
from ...models.adapters import Adapter
from ...rotation import ResidualStream, RotatedForward, Rotation, make_optimizer, orthonormality_error
from ...rotation import residual
from ...rotation.training import TrainingLog, distillation_loss, lr_schedule, mean, window_batches
from ...pruners.base import PruneConfig, Pruner
from .ste import masked


@dataclass
class GroupStats:
    """Statistics of one group of operators that read the same input."""

    names: tuple[str, ...]  # full module paths
    rotates: bool  # the input lives in the residual stream (x → x Q)
    G: torch.Tensor | None  # Σ xᵀx, kept only when the input rotates
    pruner: Pruner  # the base pruner of the group; its statistics are loaded once when the input does not rotate


@dataclass
class Teacher:
    """What the dense model gives the loss: statistics per operator group and final hidden states."""

    groups: list[GroupStats]
    z: torch.Tensor  # [windows, tokens, d] final-norm output of the dense model, original basis


@torch.no_grad()
def dense_teacher(model: nn.Module, adapter: Adapter, stream: ResidualStream, windows: torch.Tensor,
                  base: PruneConfig, device, batch_size: int = 8, progress: bool = True) -> Teacher:
    """One layer-by-layer pass of the dense rotation-invariant model over `windows`: G = Σ xᵀx of each
    operator group's inputs (a `base` pruner per group), and the final-norm output z. Only one layer sits
    on the device at a time."""
    walk = LayerWalk(adapter.model, windows, device=device, batch_size=batch_size, progress=progress,
                     desc="dense statistics")
    readers = set(stream.readers)
    groups: list[GroupStats] = []
    for index, layer, kwargs in walk:
        prefix = adapter.layer_prefix(index)
        ops = adapter.linear_groups(layer)
        grams = [None] * len(ops)
        pruners = [base.make_pruner(group[0][1].in_features, device) for group in ops]
        handles = []
        if pruners and pruners[0].uses_inputs:
            for g, group in enumerate(ops):
                def hook(module, args, g=g):
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    grams[g] = x.t() @ x if grams[g] is None else grams[g].addmm_(x.t(), x)
                handles.append(group[0][1].register_forward_pre_hook(hook))
        try:
            walk.forward(layer, kwargs, out=walk.hidden)
        finally:
            for h in handles:
                h.remove()
        for g, group in enumerate(ops):
            names = tuple(f"{prefix}.{name}" for name, _ in group)
            rotates = names[0] in readers
            G = grams[g]
            if G is not None and not rotates:
                pruners[g].load_gram(G)
            groups.append(GroupStats(names, rotates, G if rotates else None, pruners[g]))
    with on_device(adapter.model.get_submodule(adapter.final_norm_path), device, walk.offload) as norm:
        z = torch.cat([norm(h.to(device)).to(walk.offload) for h in walk.hidden.split(batch_size)])
    return Teacher(groups, z)


def learn_rotation(model: nn.Module, adapter: Adapter, stream: ResidualStream, windows: torch.Tensor,
                   teacher: Teacher, config, device, progress: bool = True,
                   blocks: list[residual.Block] | None = None) -> tuple[Rotation, dict[str, Rotation], TrainingLog]:
    """Learn Q (and an A_g per group of the rotated `blocks`) on `windows` [n, seqlen] (their prefix of
    `config.train_seqlen` tokens); returns the rotation, {g: A_g's rotation} and a log of the loss, step times
    and peak memory."""
    device = torch.device(device)
    n, seqlen = windows.shape
    tokens = min(config.train_seqlen or seqlen, seqlen)
    steps = config.steps or max(1, round(config.epochs * n / config.train_batch))
    log = TrainingLog(steps=steps, tokens_per_step=tokens * config.train_batch)

    model.to(device)
    model.requires_grad_(False)
    rotation = Rotation(stream.width, stream.ones_fixed).to(device)
    blocks = list(blocks or ())
    residuals = nn.ModuleDict({g: Rotation(stream.width) for g in residual.groups(blocks)}).to(device)
    params = [*rotation.parameters(), *residuals.parameters()]
    optimizer = make_optimizer(config.optimizer, params, config.lr, config.momentum)
    schedule = lr_schedule(optimizer, config.schedule, steps)
    view = RotatedForward(model, stream, adapter.backbone, checkpoint_layers=config.checkpoint_layers, blocks=blocks)
    group_of = {name: g for g in teacher.groups for name in g.names}
    block_of = {path: b.group for b in blocks for path in b.readers}  # reader path → its block's group
    reader_G = [g for g in teacher.groups if g.rotates and g.G is not None]
    for g in reader_G:
        g.G = g.G.to(device)
    bf16 = config.train_dtype == "bfloat16"
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = config.train_dtype == "tf32"
    batches = window_batches(n, config.train_batch, config.train_seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = tqdm(range(steps), desc=f"learning Q ({config.base_pruner} {config.pattern})", disable=not progress)
    for step in bar:
        t0 = time.perf_counter()
        batch = next(batches)
        ids = windows[batch, :tokens].to(device)
        z_dense = teacher.z[batch, :tokens].to(device)

        Q = rotation.matrix().float()
        A = {g: r.matrix().float() for g, r in residuals.items()}
        with torch.no_grad():
            Qd = Q.detach()
            for g in reader_G:
                b = block_of.get(g.names[0])
                g.pruner.load_rotated_gram(g.G, Qd if b is None else Qd @ A[b].detach())

        masks = {}  # this step's masks: a checkpointed layer's recomputation in backward reuses them

        def transform(path: str, W: torch.Tensor) -> torch.Tensor:
            if path not in masks:
                with torch.no_grad():
                    masks[path] = group_of[path].pruner.training_mask(W.detach().float())
            return masked(W, masks[path], config.ste, config.srste_decay)

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = view(ids, Q, transform, A)
        loss, kl, mse = distillation_loss(view, z.float(), z_dense, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            log.grad_norm_first = float(rotation.R.grad.norm())
        optimizer.step()
        schedule.step()

        log.record_step(step, t0, loss, kl, mse, device, lambda: max(
            orthonormality_error(r.matrix()) for r in (rotation, *residuals.values())))
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{mean(log.loss[-10:]):.4f}")

    torch.backends.cuda.matmul.allow_tf32 = tf32_before
    log.record_peak_memory(device)
    for g in reader_G:
        g.G = g.G.to(OFFLOAD)
    model.to(OFFLOAD)
    return rotation, dict(residuals.items()), log
