"""torch.compile for end-to-end speed: everything between prunekit's kernel layers fused by Inductor.

In a CUDA-graphed decode step of a Llama-3.1-8B-shaped model at batch 1, 46% of the time is outside the linear
layers (BENCHMARKS.md, issue 25): norms, rotary embedding, residual adds, cache writes, each a handful of small
eager kernels. `compiled(model)` is torch.compile(model) with every layer that runs its own kernels
(SparseLinear24 and SparseLinear24FP8, LinearFP8) called through one opaque custom op, `prunekit::kernel_layer`:
the layer's planning — timing its kernels on first use, refusals, `paths` — stays Python and eager inside the op,
while the model traces as one graph per input shape with no breaks (a break per linear would make Dynamo compile
every layer's pieces apart, past its recompile limit: the later layers would silently run eager).

The op's outputs are contiguous, as the layers' callers expect. `keep_layout=True` (or PRUNEKIT_KEEP_LAYOUT=1) is
an experiment left off: a 16-bit 2:4 layer on CUDA at more than 16 rows (a multiple of 16) then hands back
cuSPARSELt's result as it is written, W xᵀ [out, rows], i.e. the output [rows, out] transposed (`transposed_output`),
and the op's fake declares those strides (fixed by the layer and the input's shape, dtype and device alone), so that
Inductor can fold the change of layout into the kernel that reads the output next instead of an unfused strided copy.
Whether a layer may hand its output on so is an argument of the op (keep_layout, and torch's cuSPARSELt rather than
the newer library: `cusparselt_writes_transposed`), so it is written in the traced graph: Inductor's on-disk cache
keys a compiled graph by its code and inputs, and a compile cached with contiguous outputs would otherwise serve a
keep_layout model of the same shapes in another process and fail its stride checks (it did, on an H100).
At the 8B shape on one H100 (BENCHMARKS.md, issue 25) the compiled 2048-token prefill with it ran at 0.53× dense,
against 0.91× with contiguous outputs (where the extra time goes is not yet found). FP8 layers and CPU outputs stay
contiguous either way.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn as nn

from ..quantize.linear import LinearFP8
from ..sparse.linear import SparseLinear24, cusparselt_writes_transposed

#: layers that choose and run their own kernels (SparseLinear24FP8 is a SparseLinear24)
KERNEL_LAYERS = (SparseLinear24, LinearFP8)
#: the kernel layers of compiled models, by the index the op is called with (weak: a dropped model frees its weights)
_LAYERS: dict[int, weakref.ref] = {}


def _layer(index: int) -> nn.Module:
    layer = _LAYERS[index]()
    if layer is None:
        raise RuntimeError(f"prunekit::kernel_layer {index}: its model was freed")
    return layer


def transposed_output(layer: nn.Module, x: torch.Tensor, keep_layout: bool) -> bool:
    """Whether the op returns the layer's output on x transposed in memory (module docstring): with `keep_layout`, where
    the 2:4 layer writes it so (SparseLinear24.writes_transposed)."""
    return keep_layout and layer.writes_transposed(x)


def _empty_like_output(x: torch.Tensor, out_features: int, transposed: bool) -> torch.Tensor:
    lead = x.shape[:-1]
    if not transposed:
        return x.new_empty((*lead, out_features))
    return x.new_empty((out_features, x.numel() // x.shape[-1])).t().view(*lead, out_features)


@torch.library.custom_op("prunekit::kernel_layer", mutates_args=())
def kernel_layer(x: torch.Tensor, index: int, keep_layout: bool) -> torch.Tensor:
    """The eager forward of kernel layer `index` on x, in the layout `transposed_output` names."""
    layer = _layer(index)
    y = type(layer).forward(layer, x)
    if not transposed_output(layer, x, keep_layout):
        return y.contiguous()
    if y.reshape(-1, y.shape[-1]).stride() == (1, y.numel() // y.shape[-1]):
        return y
    out = _empty_like_output(x, y.shape[-1], True)  # a path that wrote [rows, out] (e.g. the dense fallback)
    return out.copy_(y)


@kernel_layer.register_fake
def _(x: torch.Tensor, index: int, keep_layout: bool) -> torch.Tensor:
    layer = _layer(index)
    return _empty_like_output(x, layer.out_features, transposed_output(layer, x, keep_layout))


def compiled(model: nn.Module, backend: str = "inductor", keep_layout: bool | None = None) -> nn.Module:
    """torch.compile(model, dynamic=False) with the kernel layers behind the custom op (module docstring), on a reset
    Dynamo that raises instead of running eager past its recompile limit (each compiled model and input shape is
    one more version of the same forward code: a benchmark of several variants would otherwise reach the limit and
    time eager code as compiled). `restore(model)` gives the kernel layers their own forward back. `keep_layout`
    (default: PRUNEKIT_KEEP_LAYOUT=1 in the environment) returns the 2:4 layers' outputs as cuSPARSELt writes them."""
    if keep_layout is None:
        keep_layout = os.environ.get("PRUNEKIT_KEEP_LAYOUT") == "1"
    torch._dynamo.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    for index in [i for i, ref in _LAYERS.items() if ref() is None]:
        del _LAYERS[index]
    for module in model.modules():
        if isinstance(module, KERNEL_LAYERS) and "forward" not in vars(module):
            index = max(_LAYERS, default=-1) + 1
            _LAYERS[index] = weakref.ref(module)
            keep = keep_layout and isinstance(module, SparseLinear24) and cusparselt_writes_transposed()
            module.forward = lambda x, index=index, keep=keep: kernel_layer(x, index, keep)
            if keep:  # cuSPARSELt's layout (module docstring)
                module._eager_contiguous_output = module.contiguous_output
                module.contiguous_output = False
    return torch.compile(model, dynamic=False, backend=backend)


def restore(model: nn.Module) -> None:
    """Undo `compiled`'s change to the kernel layers (a copy of a patched layer would call the original's op)."""
    for module in model.modules():
        if isinstance(module, KERNEL_LAYERS) and "forward" in vars(module):
            del module.forward
            if hasattr(module, "_eager_contiguous_output"):
                module.contiguous_output = module._eager_contiguous_output
                del module._eager_contiguous_output
