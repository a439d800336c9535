"""Layer-wise pruning: every linear operator of every decoder layer pruned by a registered pruner, one layer at
a time on the layer walker (prunekit.engine), each layer seeing the outputs of the already pruned ones.

Per layer: forward pre-hooks hand every group's inputs to its pruner while the walker runs the layer, the
pruner prunes each operator of the group, the pruned layer's outputs become the next layer's inputs.
Pruners that fit W* X* to the dense W X (FISTAPruner: `paired_inputs`) take prunekit.correction's loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .allocation import group_configs, layer_rates
from .checkpoints import RunCheckpoint
from .correction import prune_layerwise_corrected
from .engine import LayerWalk, OperatorResult, PruneResult, _StopForward
from .errors import UsageError
from .pruners.base import SCORED_ALLOCATIONS, PruneConfig


def reconstruction_error(W: torch.Tensor, W_pruned: torch.Tensor, X: torch.Tensor, chunk: int = 4096) -> float:
    """||W Xᵀ − Ŵ Xᵀ||²_F / ||W Xᵀ||²_F for inputs X [tokens, in] (any float dtype: computed in W's), in chunks
    of tokens."""
    num = den = 0.0
    delta = W - W_pruned
    for part in X.split(chunk):
        part = part.to(W.device, W.dtype)
        num += (part @ delta.t()).pow(2).sum().item()
        den += (part @ W.t()).pow(2).sum().item()
    return num / den if den > 0 else 0.0


@torch.no_grad()
def prune_layerwise(model: nn.Module, config: PruneConfig, calib_ids: torch.Tensor, *, device="cpu",
                    batch_size: int = 8, recon_windows: int = 8, progress: bool = True,
                    checkpoint_dir: str | Path | None = None, offload="cpu",
                    layer_sparsity: Sequence[float] | None = None,
                    on_layer_done: Callable[[int, torch.Tensor], None] | None = None) -> PruneResult:
    """Prune every linear operator of every decoder layer of `model` with `config`'s pruner, layer by layer.

    `offload`: where layers and activations wait while another layer is pruned (the walker's offload device).
    With `checkpoint_dir`, the state after each layer is saved there and a rerun with the same model,
    config and calibration windows resumes after the last finished layer.
    `layer_sparsity` gives each decoder layer its own target instead of `config.sparsity` (unstructured, or
    1 − N_l/M for a mixed N:M pattern: the layer is pruned at N_l:M); left None, the config's own allocation
    (`--layer-sparsity`: uniform, owl, rmi, sensitivity; prunekit.allocation) decides them on the dense model first,
    and report.json's details record them.
    `on_layer_done(index, hidden)` sees the outputs of each pruned layer on the calibration windows
    (hidden [windows, seqlen, dim], the next layer's inputs; read it, don't keep a reference).
    """
    allocation = {}
    # a checkpoint knows rates handed in by the caller (LoSA's stages); rates of the config's own allocation follow
    # from what it fingerprints already (config, windows, model), so a rerun can check them before computing them
    extra = "" if layer_sparsity is None else repr(list(layer_sparsity))
    if layer_sparsity is None and getattr(config, "layer_sparsity", "uniform") != "uniform":
        layer_sparsity, allocation = layer_rates(config, model, calib_ids, device=device, offload=offload,
                                                 batch_size=batch_size, progress=progress)
    if config.pattern.mixed and layer_sparsity is None:
        raise UsageError(f"--pattern {config.pattern} needs each layer's N: pass layer_sparsity or use "
                         f"--layer-sparsity {SCORED_ALLOCATIONS}")
    if config.paired_inputs or getattr(config, "parallel_layers", False):  # dense inputs: prunekit.correction
        result = prune_layerwise_corrected(model, config, calib_ids, device=device, batch_size=batch_size,
                                           progress=progress, checkpoint_dir=checkpoint_dir, offload=offload,
                                           layer_sparsity=layer_sparsity, on_layer_done=on_layer_done,
                                           checkpoint_extra=extra)
        result.details.update({"layer_sparsity": allocation} if allocation else {})
        return result
    result = PruneResult(details={"layer_sparsity": allocation} if allocation else {})
    checkpoint = RunCheckpoint(checkpoint_dir, config, calib_ids, model, extra) if checkpoint_dir else None
    walk = LayerWalk(model, calib_ids, device=device, offload=offload, batch_size=batch_size, progress=progress,
                     desc=f"{config.method} {config.pattern}", checkpoint=checkpoint,
                     state=result.progress)
    if walk.resumed:
        result.resume(walk.resumed)
    result.timings["calibration"] += walk.capture_seconds
    if layer_sparsity is not None:
        if config.pattern.is_nm and not config.pattern.mixed:
            raise UsageError(f"per-layer sparsity needs the unstructured or a mixed N:M pattern, not {config.pattern}")
        if len(layer_sparsity) != len(walk.layers):
            raise UsageError(f"layer_sparsity has {len(layer_sparsity)} entries for {len(walk.layers)} decoder layers")

    for index, layer, kwargs in walk:
        groups = walk.adapter.pruned_groups(layer, index, config)  # less what --targets/--ignore leave dense
        configs = group_configs(config, None if layer_sparsity is None else layer_sparsity[index], walk.adapter, groups)
        pruners = [c.make_pruner(group[0][1].in_features, device) for c, group in zip(configs, groups)]

        t0 = time.perf_counter()
        hooks = _StatisticsHooks(groups, pruners, recon_windows, walk.offload)
        try:
            walk.forward(layer, kwargs, on_batch=hooks.set_batch)
        finally:
            hooks.remove()
        result.timings["calibration"] += time.perf_counter() - t0

        for g, group in enumerate(groups):
            X = torch.cat(hooks.recon_inputs[g])
            for name, op in group:
                t0 = time.perf_counter()
                W = op.weight.data.float().clone()  # .float() is a no-op view for fp32 weights
                op.weight.data.copy_(pruners[g].prune(W).weight.to(op.weight.dtype))
                seconds = time.perf_counter() - t0
                result.timings["pruning"] += seconds
                result.operators.append(OperatorResult(
                    name=f"{walk.adapter.layer_prefix(index)}.{name}",
                    shape=tuple(W.shape),
                    sparsity=(op.weight.data == 0).float().mean().item(),
                    recon_error=reconstruction_error(W, op.weight.data.float(), X),
                    seconds=seconds,
                    extra=pruners[g].extra,
                ))
            pruners[g] = hooks.recon_inputs[g] = None  # free the statistics

        t0 = time.perf_counter()
        walk.forward(layer, kwargs, out=walk.hidden)
        result.timings["calibration"] += time.perf_counter() - t0
        if on_layer_done is not None:
            on_layer_done(index, walk.hidden)
    return result


class _StatisticsHooks:
    """Forward pre-hooks that give each group's input to the group's pruner (operators in a group read
    the same input, so statistics are gathered once per group) and keep the first windows for the
    reconstruction error (on `keep_on`, the walker's offload device). The last operator of the layer stops the
    forward pass: its output is not needed."""

    def __init__(self, groups: list[list[tuple[str, nn.Linear]]], pruners: list, recon_windows: int, keep_on="cpu"):
        self.pruners, self.recon_windows, self.keep_on = pruners, recon_windows, keep_on
        self.recon_inputs: list[list[torch.Tensor]] = [[] for _ in groups]
        self.batch_start = 0
        self.handles = [group[0][1].register_forward_pre_hook(self._collect(g)) for g, group in enumerate(groups)]
        if groups:  # none: every operator of the layer is left dense (--ignore), the layer just runs
            self.handles.append(groups[-1][-1][1].register_forward_pre_hook(self._stop))

    def set_batch(self, start: int) -> None:
        self.batch_start = start

    def _collect(self, g: int):
        def hook(module, args):
            x = args[0]
            self.pruners[g].add_batch(x.reshape(-1, x.shape[-1]))
            keep = self.recon_windows - self.batch_start
            if keep > 0:
                # as the layer sees them, where activations wait (off the GPU unless --offload none)
                self.recon_inputs[g].append(x[:keep].reshape(-1, x.shape[-1]).to(self.keep_on, copy=True))

        return hook

    @staticmethod
    def _stop(module, args):
        raise _StopForward

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
