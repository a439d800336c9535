"""Layer-wise pruning with FISTAPruner's error-correction modes (the pruners that fit W* X* to W X).

Such a pruner needs, for every operator, two inputs of the same tokens: X, the dense model's, and
X*, the pruned model's. Two copies of each decoder layer run side by side: the dense one (kept
aside before pruning starts) and the one being pruned, whose groups of operators are pruned in
execution order. For group g, every batch is run through both copies up to g's first operator;
their inputs there are X and X*. So X* already carries the pruning of the groups before g.

- `intra` (the paper's default): both copies read the dense model's layer input, so a layer's
  pruning depends on dense activations only and layers are independent (see prunekit.parallel).
- `intra+inter`: the pruned copy reads the pruned previous layers' output; the target stays dense.
- `none`: X* = X, the dense layer's own inputs, for every operator. Any other layer-wise pruner with
  `--parallel-layers` runs this way: its statistics from the dense model's inputs, layers independent.

Layer inputs: the dense stream is always propagated by the dense copy; the pruned stream (for `intra+inter`,
or to hand each pruned layer's outputs to `on_layer_done`) by the pruned layer.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn

from . import parallel
from .allocation import group_configs
from .checkpoints import RunCheckpoint
from .engine import LayerWalk, OperatorResult, PruneResult, _StopForward, forward_layer
from .errors import UsageError


def error_correction(config) -> str:
    """The config's mode; a pruner that does not fit W* X* (wanda, sparsegpt, ...) runs here only with
    --parallel-layers, on the dense inputs alone: `none`."""
    return getattr(config, "error_correction", "none")


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[batch, seqlen, in] → [tokens, in]: what Pruner.add_batch takes."""
    return x.reshape(-1, x.shape[-1])


def input_of(layer: nn.Module, op: nn.Module, hidden: torch.Tensor, kwargs: dict, device) -> torch.Tensor:
    """The input that `op` receives when `layer` runs on `hidden`; the rest of the layer is skipped."""
    box = []

    def hook(module, args):
        box.append(args[0])
        raise _StopForward

    handle = op.register_forward_pre_hook(hook)
    try:
        layer(hidden.to(device), **kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return box[0]


class _Collect:
    """Forward pre-hooks on the first operator of each listed group: hand each batch's input to
    the group's pruner (or keep it in `last` when `pruners` is None); they do not stop the forward."""

    def __init__(self, ops: list[nn.Module], pruners: list | None, keep_first: bool = False):
        self.last, self.keep_first = None, keep_first
        self.first: dict[int, torch.Tensor] = {}  # group → its first batch's inputs (for the reconstruction error)
        self.handles = [op.register_forward_pre_hook(self._hook(i, pruners)) for i, op in enumerate(ops)]

    def _hook(self, i, pruners):
        def hook(module, args):
            if pruners is None:
                self.last = args[0]
            else:
                pruners[i].add_batch(tokens(args[0]))
                if self.keep_first and i not in self.first:
                    self.first[i] = tokens(args[0]).clone()

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def prune_layer_corrected(layer: nn.Module, adapter, config, dense_in: torch.Tensor, pruned_in: torch.Tensor | None,
                          kwargs: dict, device, batch_size: int, index: int,
                          rate=None) -> tuple[list[OperatorResult], float]:
    """Prune `layer` in place group by group and advance the dense stream: on return `dense_in` holds
    the dense layer's outputs (the next layer's dense inputs). `rate`: the layer's own sparsity, or one per
    residual block (allocation.group_configs); None: the config's.

    `pruned_in` is the pruned stream's layer input (intra+inter) or None (both copies read
    `dense_in`). Returns (operator results, seconds spent in the pruners)."""
    dense_layer = copy.deepcopy(layer)
    prefix = adapter.layer_prefix(index)
    groups, dense_groups = (adapter.pruned_groups(layer, index, config),  # less what --targets/--ignore leave dense
                            adapter.pruned_groups(dense_layer, index, config))
    configs = group_configs(config, rate, adapter, groups)
    pruners = [c.make_pruner(group[0][1].in_features, device) for c, group in zip(configs, groups)]
    results, prune_s = [], 0.0

    def prune_group(g, inputs=None):
        """`inputs`: a batch of the group's dense inputs, for pruners that report no error of their own."""
        nonlocal prune_s
        for name, op in groups[g]:
            t0 = time.perf_counter()
            W = op.weight.data.float().clone()
            op.weight.data.copy_(pruners[g].prune(W).weight.to(op.weight.dtype))
            seconds = time.perf_counter() - t0
            prune_s += seconds
            extra = dict(pruners[g].extra or {})
            error = extra.get("rel_error")
            if error is None and inputs is not None:
                from .layerwise import reconstruction_error  # (layerwise imports this module)
                error = reconstruction_error(W, op.weight.data.float(), inputs)
            results.append(OperatorResult(
                name=f"{prefix}.{name}", shape=tuple(W.shape), sparsity=(op.weight.data == 0).float().mean().item(),
                recon_error=float("nan") if error is None else error, seconds=seconds, extra=extra))
        pruners[g] = None  # free the statistics

    if error_correction(config) == "none" or not groups:  # not groups: the whole layer left dense (--ignore)
        # X* = X for every operator: one dense pass feeds every group and yields the layer's outputs
        hooks = _Collect([group[0][1] for group in dense_groups], pruners, keep_first=not config.paired_inputs)
        try:
            forward_layer(dense_layer, dense_in, kwargs, device, batch_size, out=dense_in)
        finally:
            hooks.remove()
        for g in range(len(groups)):
            prune_group(g, hooks.first.get(g))
        return results, prune_s

    stream = dense_in if pruned_in is None else pruned_in
    last = len(groups) - 1
    for g, group in enumerate(groups):
        first, dense_first = group[0][1], dense_groups[g][0][1]
        same = pruned_in is None and g == 0  # nothing upstream differs yet: X* = X
        for start in range(0, dense_in.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            x_star = None if same else input_of(layer, first, stream[rows], kwargs, device)
            if g < last:
                x = input_of(dense_layer, dense_first, dense_in[rows], kwargs, device)
            else:
                # the last group's dense inputs come from the full dense pass that also advances the
                # dense stream (x_star was read from `stream` above, before it is overwritten)
                hook = _Collect([dense_first], None)
                try:
                    forward_layer(dense_layer, dense_in[rows], kwargs, device, batch_size, out=dense_in[rows])
                finally:
                    hook.remove()
                x = hook.last
            pruners[g].add_batch(tokens(x)) if same else pruners[g].add_batch(tokens(x_star), tokens(x))
        prune_group(g)
    return results, prune_s


@torch.no_grad()
def prune_layerwise_corrected(model: nn.Module, config, calib_ids: torch.Tensor, *, device="cpu",
                              batch_size: int = 8, progress: bool = True, checkpoint_dir=None,
                              offload="cpu", layer_sparsity=None, on_layer_done=None,
                              checkpoint_extra: str = "") -> PruneResult:
    """prune_layerwise for configs with `error_correction` (FISTAPruner). With `config.parallel_layers`
    under torchrun, each rank prunes its share of the layers and all ranks end with the whole model.
    `on_layer_done(index, hidden)` sees the pruned model's outputs of each layer (the pruned stream, which is
    then kept in every mode: one more layer forward per layer unless `intra+inter` keeps it anyway).
    `checkpoint_extra`: what the checkpoint's fingerprint adds to the config (prune_layerwise: rates handed in)."""
    result = PruneResult()
    inter = error_correction(config) == "intra+inter"
    pruned_stream = inter or on_layer_done is not None
    checkpoint = RunCheckpoint(checkpoint_dir, config, calib_ids, model, checkpoint_extra) if checkpoint_dir else None
    streams = {"pruned_in": None}
    walk = LayerWalk(model, calib_ids, device=device, offload=offload, batch_size=batch_size, progress=progress,
                     desc=f"{config.method} {config.pattern} {error_correction(config)}", checkpoint=checkpoint,
                     state=lambda: {"pruned_in": streams["pruned_in"], **result.progress()})
    dist = parallel.Layers.start(config, device, len(walk.layers))
    if dist.world > 1 and checkpoint_dir:
        raise UsageError("--checkpoint-dir cannot be combined with --parallel-layers under torchrun")
    if dist.world > 1 and on_layer_done is not None:
        raise UsageError("--parallel-layers prunes each layer on one rank: no rank sees every layer's outputs")
    walk.stop = dist.last_layer() + 1
    if walk.resumed:
        streams["pruned_in"] = walk.resumed["pruned_in"]
        result.resume(walk.resumed)
    elif pruned_stream:
        streams["pruned_in"] = walk.hidden.clone()
    result.timings["calibration"] += walk.capture_seconds

    for index, layer, kwargs in walk:
        t0 = time.perf_counter()
        pruned_in = streams["pruned_in"]
        if dist.owns(index):
            ops, prune_s = prune_layer_corrected(layer, walk.adapter, config, walk.hidden,
                                                 pruned_in if inter else None, kwargs, device, batch_size, index,
                                                 rate=None if layer_sparsity is None else layer_sparsity[index])
            result.operators += ops
            result.timings["pruning"] += prune_s
            if pruned_stream:  # the pruned layer's outputs are the next layer's pruned-stream inputs
                walk.forward(layer, kwargs, hidden=pruned_in, out=pruned_in)
                if on_layer_done is not None:
                    on_layer_done(index, pruned_in)
        else:  # another rank prunes this layer; here it only carries the dense stream
            walk.forward(layer, kwargs, out=walk.hidden)
            prune_s = 0.0
        result.timings["calibration"] += time.perf_counter() - t0 - prune_s
    dist.gather(walk.layers, walk.adapter, result, device)
    return result
