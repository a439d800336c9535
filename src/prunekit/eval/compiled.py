"""torch.compile for end-to-end speed: everything between prunekit's kernel layers fused by Inductor.

In a CUDA-graphed decode step of a Llama-3.1-8B-shaped model at batch 1, 46% of the time is outside the linear
layers (BENCHMARKS.md, issue 25): norms, rotary embedding, residual adds, cache writes, each a handful of small
eager kernels. `compiled(model)` is torch.compile(model) with every layer that runs its own kernels
(SparseLinear24 and SparseLinear24FP8, LinearFP8) called through one opaque custom op, `prunekit::kernel_layer`:
the layer's planning — timing its kernels on first use, refusals, `paths` — stays Python and eager inside the op,
while the model traces as one graph per input shape with no breaks (a break per linear would make Dynamo compile
every layer's pieces apart, past its recompile limit: the later layers would silently run eager). The op returns
a contiguous output (a 2:4 layer may hand back a transposed view; Inductor plans for the fake's strides). Same
numbers as the eager model up to the order of fused floating-point operations.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from ..quantize.linear import LinearFP8
from ..sparse.linear import SparseLinear24

#: layers that choose and run their own kernels (SparseLinear24FP8 is a SparseLinear24)
KERNEL_LAYERS = (SparseLinear24, LinearFP8)
#: the kernel layers of compiled models, by the index the op is called with (weak: a dropped model frees its weights)
_LAYERS: dict[int, weakref.ref] = {}


def _layer(index: int) -> nn.Module:
    layer = _LAYERS[index]()
    if layer is None:
        raise RuntimeError(f"prunekit::kernel_layer {index}: its model was freed")
    return layer


@torch.library.custom_op("prunekit::kernel_layer", mutates_args=())
def kernel_layer(x: torch.Tensor, index: int) -> torch.Tensor:
    """The eager forward of kernel layer `index` on x, contiguous."""
    layer = _layer(index)
    return type(layer).forward(layer, x).contiguous()


@kernel_layer.register_fake
def _(x: torch.Tensor, index: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], _layer(index).out_features))


def compiled(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile(model, dynamic=False) with the kernel layers behind the custom op (module docstring), on a reset
    Dynamo that raises instead of running eager past its recompile limit (each compiled model and input shape is
    one more version of the same forward code: a benchmark of several variants would otherwise reach the limit and
    time eager code as compiled). `restore(model)` gives the kernel layers their own forward back."""
    torch._dynamo.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    for index in [i for i, ref in _LAYERS.items() if ref() is None]:
        del _LAYERS[index]
    for module in model.modules():
        if isinstance(module, KERNEL_LAYERS) and "forward" not in vars(module):
            index = max(_LAYERS, default=-1) + 1
            _LAYERS[index] = weakref.ref(module)
            module.forward = lambda x, index=index: kernel_layer(x, index)
    return torch.compile(model, dynamic=False, backend=backend)


def restore(model: nn.Module) -> None:
    """Undo `compiled`'s change to the kernel layers (a copy of a patched layer would call the original's op)."""
    for module in model.modules():
        if isinstance(module, KERNEL_LAYERS) and "forward" in vars(module):
            del module.forward
