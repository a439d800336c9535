"""The layer walker: the one loop over decoder layers, and the one place that moves layers and activations
between devices.

1. Capture the inputs of decoder layer 0 for every calibration window (and the keyword arguments
   each layer is called with: masks, rotary embeddings), running only the embeddings.
2. For each decoder layer: move it to the device, hand it to the method (collect statistics, prune, train,
   compute a basis; `LayerWalk.forward` runs it over the activations), move it back to the offload device
   and, with a checkpoint, save its state, the next layer's inputs and the method's progress.

Only the current layer and one batch of activations sit on the device, so a model larger than the
accelerator's memory is processed one layer at a time with the rest offloaded to CPU (`offload`; the device
itself for `--offload none`). A streamed model (prunekit.streaming, `--offload disk`) keeps its layers on disk:
the walker reads each one before its turn and writes it out after. Whole-model phases (training a rotation or
adapters) take the model to the device with `on_device`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoints import RunCheckpoint
from .errors import UsageError
from .models.adapters import Adapter, get_adapter
from .streaming import layer_store

OFFLOAD = "cpu"  # where layers and activations wait while another layer works


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

    def progress(self) -> dict:
        """The operators and timings so far as plain data, for a checkpoint (`resume` reads it back)."""
        return {"operators": [asdict(op) for op in self.operators], "timings": dict(self.timings)}

    def resume(self, progress: dict) -> None:
        self.operators = [OperatorResult(**op) for op in progress["operators"]]
        self.timings = dict(progress["timings"])

    def before_save(self, model: nn.Module, directory) -> dict | None:
        """A method's last step before its model is saved into `directory` (e.g. unmerged adapters written
        beside it); returns what report.json should say about it, or None."""
        return None


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
            self.sink["store"](hidden_states)
        if self.index not in self.sink["kwargs"]:
            kwargs.pop("past_key_values", None)
            kwargs["use_cache"] = False
            self.sink["kwargs"][self.index] = kwargs
        return hidden_states


@torch.no_grad()
def capture_inputs(adapter: Adapter, input_ids: torch.Tensor, device, offload=OFFLOAD, batch_size: int = 8,
                   progress: bool = True) -> LayerInputs:
    """Run the model with every decoder layer replaced by a catcher; nothing but the embeddings computes.

    Only the backbone goes to the device (not the LM head: 1 GB at 8B widths), and each batch of captured inputs
    goes straight into one buffer on the offload device, pinned host memory when the layers run on a GPU (so
    that every later pass over the activations copies at full PCIe bandwidth), never piling up on the GPU."""
    layers = adapter.layers()
    originals = list(layers)
    buffer: dict = {"rows": 0}

    def store(hidden: torch.Tensor) -> None:
        if "hidden" not in buffer:
            pinned = torch.device(device).type == "cuda" and torch.device(offload).type == "cpu"
            buffer["hidden"] = torch.empty((input_ids.shape[0], *hidden.shape[1:]), dtype=hidden.dtype,
                                           device=offload, pin_memory=pinned)
        rows = buffer["rows"]
        buffer["hidden"][rows:rows + hidden.shape[0]].copy_(hidden)
        buffer["rows"] = rows + hidden.shape[0]

    sink: dict = {"store": store, "kwargs": {}}
    for i in range(len(layers)):
        layers[i] = _Catcher(i, sink)
    adapter.backbone.to(device)  # the layers are swapped out, so only embeddings, norms, rotary tables move
    try:
        # the first window alone, so that the captured kwargs have batch dimension 1 and broadcast
        batches = [input_ids[:1]] + list(input_ids[1:].split(batch_size))
        for batch in tqdm(batches, desc="capturing layer inputs", disable=not progress, leave=False):
            if batch.numel():
                adapter.backbone(input_ids=batch.to(device), use_cache=False)
    finally:
        adapter.backbone.to(offload)
        for i, layer in enumerate(originals):
            layers[i] = layer
    return LayerInputs(buffer["hidden"], [sink["kwargs"][i] for i in range(len(originals))])


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
        if out is not None:  # straight into `out`: from the GPU into pinned host memory this is one DMA copy
            out[start:start + batch_size].copy_(y[0] if isinstance(y, tuple) else y)
    return out


@contextmanager
def on_device(module: nn.Module, device, offload=OFFLOAD):
    """`module` (a whole model, a norm) on `device` for the block, then back on the offload device."""
    module.to(device)
    try:
        yield module
    finally:
        module.to(offload)


class LayerWalk:
    """Visit every decoder layer of `model` in order: `for index, layer, kwargs in walk:` gives the layer on
    the device and its call kwargs; `walk.hidden` [windows, seqlen, dim] (on the offload device) holds its
    inputs, which the method advances (usually `walk.forward(layer, kwargs, out=walk.hidden)`).

    With a `checkpoint`, after each layer its state, `walk.hidden` and the method's `state()` are saved; a
    rerun starts after the last saved layer, with those layers loaded and `walk.resumed` = that `state()`
    (None on a fresh start). `stop` ends the walk before that layer (a torchrun rank's share).

    On a streamed model each layer is read from disk before its turn and written out after it (`read_only`:
    an evaluation pass, nothing written)."""

    def __init__(self, model: nn.Module, calib_ids: torch.Tensor, *, device="cpu", offload=OFFLOAD,
                 batch_size: int = 8, progress: bool = True, desc: str = "layers",
                 checkpoint: RunCheckpoint | None = None, state: Callable[[], dict] | None = None,
                 stop: int | None = None, read_only: bool = False):
        self.adapter = get_adapter(model)
        self.layers = self.adapter.layers()
        self.store, self.read_only = layer_store(model), read_only
        self.device, self.offload, self.batch_size = device, offload, batch_size
        self.progress, self.desc, self.checkpoint, self.state = progress, desc, checkpoint, state
        self.stop = len(self.layers) if stop is None else stop
        t0 = time.perf_counter()
        saved = checkpoint.read("progress.pt") if checkpoint else None
        self.start, self.resumed = 0, None
        if saved is None:
            self.inputs = capture_inputs(self.adapter, calib_ids, device, offload, batch_size, progress)
        else:
            self.start, self.resumed = saved["next_layer"], saved["state"]
            for i in range(self.start):
                self._load_layer(i)
            kwargs = capture_inputs(self.adapter, calib_ids[:1], device, offload, 1, False).kwargs
            self.inputs = LayerInputs(saved["hidden"], kwargs)
        self.capture_seconds = time.perf_counter() - t0

    @property
    def hidden(self) -> torch.Tensor:
        return self.inputs.hidden

    def __iter__(self) -> Iterator[tuple[int, nn.Module, dict]]:
        bar = tqdm(range(self.start, self.stop), desc=self.desc, disable=not self.progress, initial=self.start,
                   total=self.stop, unit="layer")
        for index in bar:
            if self.store:
                self.store.load(index)
            layer = self.layers[index].to(self.device)
            yield index, layer, self.inputs.kwargs[index]
            self.layers[index] = layer.to(self.offload)
            if self.checkpoint:
                self.checkpoint.write(f"layer_{index}.pt", self.layers[index].state_dict())
                self.checkpoint.write("progress.pt", {"next_layer": index + 1, "hidden": self.inputs.hidden,
                                                      "state": self.state() if self.state else None})
            if self.store:
                (self.store.drop if self.read_only else self.store.release)(index)

    def forward(self, layer: nn.Module, kwargs: dict, hidden: torch.Tensor | None = None,
                out: torch.Tensor | None = None, on_batch=None) -> torch.Tensor | None:
        """Run `layer` over `hidden` (default: the walk's activations) batch by batch into `out` (may be the
        input itself; None: outputs dropped, e.g. when hooks only collect statistics)."""
        return forward_layer(layer, self.inputs.hidden if hidden is None else hidden, kwargs, self.device,
                             self.batch_size, out=out, on_batch=on_batch)

    def _load_layer(self, i: int) -> None:
        path = self.checkpoint.dir / f"layer_{i}.pt"
        if self.store:  # storage to load into; the finished layer goes straight back to disk
            self.layers[i].to_empty(device="cpu")
        try:
            self.layers[i].load_state_dict(self.checkpoint.read(f"layer_{i}.pt"))
        except (RuntimeError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"checkpoint file {path} does not fit layer {i} ({type(err).__name__}): delete "
                             f"{self.checkpoint.dir} to start fresh") from err
        if self.store:
            self.store.release(i)
