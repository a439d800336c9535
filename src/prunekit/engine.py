"""The layer-sequential calibration loop: the one place that moves layers and activations between devices.

1. Capture the inputs of decoder layer 0 for every calibration window (and the keyword arguments
   each layer is called with: masks, rotary embeddings), running only the embeddings.
2. For each decoder layer: move it to the device, feed the captured inputs through it while forward
   pre-hooks hand every linear operator's inputs to its pruner, prune the operators, run the pruned
   layer to produce the next layer's inputs, move it back.

Only the current layer and one batch of activations sit on the device, so a model larger than the
accelerator's memory is pruned one layer at a time with the rest offloaded to CPU.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoints import RunCheckpoint
from .errors import UsageError
from .models.adapters import Adapter, get_adapter
from .pruners.base import PruneConfig


@dataclass
class OperatorResult:
    """What pruning did to one linear operator."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    recon_error: float  # ||W X − Ŵ X||² / ||W X||² on the first calibration windows (error-correcting
    #                     pruners: ||W X − Ŵ X*||² / ||W X||² over all calibration tokens)
    seconds: float
    extra: dict | None = None  # method-specific log (FISTA: λ, iterations, objective), as the pruner gives it


@dataclass
class PruneResult:
    operators: list[OperatorResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"calibration": 0.0, "pruning": 0.0})
    details: dict = field(default_factory=dict)  # whole-model methods report their own figures here

    @property
    def achieved_sparsity(self) -> float:
        total = sum(op.shape[0] * op.shape[1] for op in self.operators)
        zeros = sum(op.sparsity * op.shape[0] * op.shape[1] for op in self.operators)
        return zeros / total if total else 0.0


@dataclass
class LayerInputs:
    """Inputs of the current decoder layer for every calibration window, and each layer's call kwargs."""

    hidden: torch.Tensor  # [windows, seqlen, hidden] on the offload device
    kwargs: list[dict]  # per decoder layer, captured from a single window (batch dims of 1 broadcast)


class _StopForward(Exception):
    """Raised by a hook once the statistics it needs are collected: the rest of the layer is skipped."""


class _Catcher(nn.Module):
    """Stands in for a decoder layer during capture: records its input and kwargs, passes the input on."""

    def __init__(self, index: int, sink: dict):
        super().__init__()
        self.index, self.sink = index, sink

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.sink["hidden"].append(hidden_states)
        if self.index not in self.sink["kwargs"]:
            kwargs.pop("past_key_values", None)
            kwargs["use_cache"] = False
            self.sink["kwargs"][self.index] = kwargs
        return hidden_states


@torch.no_grad()
def capture_inputs(adapter: Adapter, input_ids: torch.Tensor, device, offload="cpu", batch_size: int = 8,
                   progress: bool = True) -> LayerInputs:
    """Run the model with every decoder layer replaced by a catcher; nothing but the embeddings computes."""
    layers = adapter.layers()
    originals = list(layers)
    sink: dict = {"hidden": [], "kwargs": {}}
    for i in range(len(layers)):
        layers[i] = _Catcher(i, sink)
    adapter.model.to(device)  # the layers are swapped out, so only embeddings/norms/head move
    try:
        # the first window alone, so that the captured kwargs have batch dimension 1 and broadcast
        batches = [input_ids[:1]] + list(input_ids[1:].split(batch_size))
        for batch in tqdm(batches, desc="capturing layer inputs", disable=not progress, leave=False):
            if batch.numel():
                adapter.backbone(input_ids=batch.to(device), use_cache=False)
    finally:
        adapter.model.to(offload)
        for i, layer in enumerate(originals):
            layers[i] = layer
    hidden = torch.cat([h.to(offload) for h in sink["hidden"]])
    return LayerInputs(hidden, [sink["kwargs"][i] for i in range(len(originals))])


def forward_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, device, batch_size: int,
                  out: torch.Tensor | None = None, on_batch=None) -> torch.Tensor | None:
    """Run `layer` over `hidden` batch by batch; write the outputs to `out` (may be `hidden` itself).

    `on_batch(start)` is called before each batch; a hook raising _StopForward ends that batch early.
    """
    for start in range(0, hidden.shape[0], batch_size):
        if on_batch is not None:
            on_batch(start)
        try:
            y = layer(hidden[start:start + batch_size].to(device), **kwargs)
        except _StopForward:
            continue
        if out is not None:
            out[start:start + batch_size] = (y[0] if isinstance(y, tuple) else y).to(out.device)
    return out


class _StatisticsHooks:
    """Forward pre-hooks that give each group's input to the group's pruner (operators in a group read
    the same input, so statistics are gathered once per group) and keep the first windows for the
    reconstruction error. The last operator of the layer stops the forward pass: its output is not needed."""

    def __init__(self, groups: list[list[tuple[str, nn.Linear]]], pruners: list, recon_windows: int):
        self.pruners, self.recon_windows = pruners, recon_windows
        self.recon_inputs: list[list[torch.Tensor]] = [[] for _ in groups]
        self.batch_start = 0
        self.handles = [group[0][1].register_forward_pre_hook(self._collect(g)) for g, group in enumerate(groups)]
        self.handles.append(groups[-1][-1][1].register_forward_pre_hook(self._stop))

    def set_batch(self, start: int) -> None:
        self.batch_start = start

    def _collect(self, g: int):
        def hook(module, args):
            x = args[0]
            self.pruners[g].add_batch(x.reshape(-1, x.shape[-1]))
            keep = self.recon_windows - self.batch_start
            if keep > 0:
                self.recon_inputs[g].append(x[:keep].reshape(-1, x.shape[-1]).float())

        return hook

    @staticmethod
    def _stop(module, args):
        raise _StopForward

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def reconstruction_error(W: torch.Tensor, W_pruned: torch.Tensor, X: torch.Tensor, chunk: int = 4096) -> float:
    """||W Xᵀ − Ŵ Xᵀ||²_F / ||W Xᵀ||²_F for inputs X [tokens, in], in chunks of tokens."""
    num = den = 0.0
    delta = W - W_pruned
    for part in X.split(chunk):
        num += (part @ delta.t()).pow(2).sum().item()
        den += (part @ W.t()).pow(2).sum().item()
    return num / den if den > 0 else 0.0


@torch.no_grad()
def prune_layerwise(model: nn.Module, config: PruneConfig, calib_ids: torch.Tensor, *, device="cpu",
                    offload="cpu", batch_size: int = 8, recon_windows: int = 8, progress: bool = True,
                    checkpoint_dir: str | Path | None = None,
                    layer_sparsity: Sequence[float] | None = None,
                    on_layer_done: Callable[[int, torch.Tensor], None] | None = None) -> PruneResult:
    """Prune every linear operator of every decoder layer of `model` with `config`'s pruner, layer by layer.

    With `checkpoint_dir`, the state after each layer is saved there and a rerun with the same model,
    config and calibration windows resumes after the last finished layer.
    `layer_sparsity` (unstructured only) gives each decoder layer its own target instead of
    `config.sparsity` (non-uniform allocations: LoSA's RMI rates, OWL, ...).
    `on_layer_done(index, hidden)` sees the outputs of each pruned layer on the calibration windows
    (hidden [windows, seqlen, dim], the next layer's inputs; read it, don't keep a reference).
    Configs with an `error_correction` field (FISTAPruner) take the paired dense/pruned loop of
    prunekit.correction instead.
    """
    if getattr(config, "error_correction", None) is not None:
        from .correction import prune_layerwise_corrected

        if layer_sparsity is not None or on_layer_done is not None:
            raise UsageError(f"{config.method} takes one sparsity for all layers (no per-layer rates yet)")
        return prune_layerwise_corrected(model, config, calib_ids, device=device, offload=offload,
                                         batch_size=batch_size, progress=progress, checkpoint_dir=checkpoint_dir)
    adapter = get_adapter(model)
    result = PruneResult()
    t0 = time.perf_counter()
    layers = adapter.layers()
    if layer_sparsity is not None:
        if config.pattern.is_nm:
            raise UsageError(f"per-layer sparsity needs the unstructured pattern, not {config.pattern}")
        if len(layer_sparsity) != len(layers):
            raise UsageError(f"layer_sparsity has {len(layer_sparsity)} entries for {len(layers)} decoder layers")
    ckpt = _Checkpoint(checkpoint_dir, config, calib_ids, model, layer_sparsity) if checkpoint_dir else None
    start_layer, inputs = (ckpt.load(layers, result) if ckpt else (0, None))
    if inputs is None:
        inputs = capture_inputs(adapter, calib_ids, device, offload, batch_size, progress)
    elif start_layer < len(layers):
        inputs = LayerInputs(inputs, capture_inputs(adapter, calib_ids[:1], device, offload, 1, False).kwargs)
    result.timings["calibration"] += time.perf_counter() - t0

    bar = tqdm(range(start_layer, len(layers)), desc=f"{config.method} {config.pattern}", disable=not progress,
               initial=start_layer, total=len(layers), unit="layer")
    for index in bar:
        layer = layers[index].to(device)
        kwargs = inputs.kwargs[index]
        groups = adapter.linear_groups(layer)
        layer_config = config if layer_sparsity is None else dataclasses.replace(config, sparsity=layer_sparsity[index])
        pruners = [layer_config.make_pruner(group[0][1].in_features, device) for group in groups]

        t0 = time.perf_counter()
        hooks = _StatisticsHooks(groups, pruners, recon_windows)
        try:
            forward_layer(layer, inputs.hidden, kwargs, device, batch_size, on_batch=hooks.set_batch)
        finally:
            hooks.remove()
        result.timings["calibration"] += time.perf_counter() - t0

        for g, group in enumerate(groups):
            X = torch.cat(hooks.recon_inputs[g])
            for name, op in group:
                t0 = time.perf_counter()
                W = op.weight.data.float().clone()  # .float() is a no-op view for fp32 weights
                W_pruned = pruners[g].prune(W).weight
                op.weight.data.copy_(W_pruned.to(op.weight.dtype))
                seconds = time.perf_counter() - t0
                result.timings["pruning"] += seconds
                result.operators.append(OperatorResult(
                    name=f"{adapter.layer_prefix(index)}.{name}",
                    shape=tuple(W.shape),
                    sparsity=(op.weight.data == 0).float().mean().item(),
                    recon_error=reconstruction_error(W, op.weight.data.float(), X),
                    seconds=seconds,
                    extra=pruners[g].extra,
                ))
            pruners[g] = hooks.recon_inputs[g] = None  # free the statistics

        t0 = time.perf_counter()
        forward_layer(layer, inputs.hidden, kwargs, device, batch_size, out=inputs.hidden)
        layers[index] = layer.to(offload)
        result.timings["calibration"] += time.perf_counter() - t0
        if on_layer_done is not None:
            on_layer_done(index, inputs.hidden)
        if ckpt:
            ckpt.save(index, layers[index], inputs.hidden, result)
    return result


class _Checkpoint:
    """Layer-wise resume: after layer i, `layer_i.pt` holds its pruned state and `progress.pt` the next layer's
    inputs and the results so far (files of a prunekit.checkpoints.RunCheckpoint)."""

    def __init__(self, directory, config: PruneConfig, calib_ids: torch.Tensor, model: nn.Module,
                 layer_sparsity=None):
        extra = "" if layer_sparsity is None else repr(list(layer_sparsity))
        self.files = RunCheckpoint(directory, config, calib_ids, model, extra)
        self.dir = self.files.dir

    def load(self, layers: nn.ModuleList, result: PruneResult):
        state = self.files.read("progress.pt")
        if state is None:
            return 0, None
        for i in range(state["next_layer"]):
            try:
                layers[i].load_state_dict(self.files.read(f"layer_{i}.pt"))
            except (RuntimeError, KeyError, TypeError, AttributeError) as err:
                raise UsageError(f"checkpoint file {self.dir / f'layer_{i}.pt'} does not fit layer {i} "
                                 f"({type(err).__name__}): delete {self.dir} to start fresh") from err
        result.operators = [OperatorResult(**op) for op in state["operators"]]
        result.timings = state["timings"]
        return state["next_layer"], state["hidden"]

    def save(self, index: int, layer: nn.Module, hidden: torch.Tensor, result: PruneResult) -> None:
        self.files.write(f"layer_{index}.pt", layer.state_dict())
        self.files.write("progress.pt", {"next_layer": index + 1, "hidden": hidden,
                                         "operators": [asdict(op) for op in result.operators],
                                         "timings": dict(result.timings)})
