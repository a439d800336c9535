"""Decoder layers recomputed in the backward pass, with weights that are functions of trained tensors.

Training a rotation (RotPruner) or sliced bases (RotPruner-structured) runs the whole model with every layer's
weights computed from the trained tensors each step. Kept for the backward pass, those weights and the layer's
activations cost about a layer's fp32 weights per layer; under `recomputed_layers`, layer l instead runs inside a
non-reentrant activation checkpoint that computes its weights `weights(l)` itself, so the backward pass keeps only
the layer's input and recomputes the rest: one layer's memory instead of all, one more forward pass of time, and
the same arithmetic (gradients differ from the kept version by summation order only).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint


@contextmanager
def recomputed_layers(layers: list[nn.Module], weights: Callable[[int], dict[str, torch.Tensor]],
                      around: Callable[[int], ContextManager] | None = None):
    """Within the block, a call of layers[l] runs checkpointed as functional_call(layers[l], weights(l), ...), inside
    `around(l)` when given (e.g. hooks the recomputation needs too); `weights(l)` names parameters relative to the
    layer. On exit the layers' own forward shows again."""
    inside: set[int] = set()  # layers whose checkpointed function is running

    for l, layer in enumerate(layers):
        def run(*args, l=l, layer=layer, **kwargs):
            inside.add(l)
            try:
                with around(l) if around else nullcontext():
                    return functional_call(layer, weights(l), args, kwargs, strict=False)
            finally:
                inside.discard(l)

        def forward(*args, l=l, layer=layer, run=run, **kwargs):
            if l in inside:  # the call from `run` itself: the layer's own forward
                return type(layer).forward(layer, *args, **kwargs)
            return checkpoint(run, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute: the class's forward shows again
