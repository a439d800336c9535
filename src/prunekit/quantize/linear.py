"""LinearFP8: a linear layer holding its weight in FP8 (E4M3) with one scale per output channel.

On CPU (and wherever no FP8 kernel runs) it computes `fp8.fp8_linear`, the exact fp32 reference. On a CUDA GPU
with FP8 tensor cores (compute capability ≥ 8.9) and per-token activations it runs `torch._scaled_mm` with row-wise
scales (inputs quantized by quantize/per_token.py's one-pass kernel); a GPU or torch build that refuses it falls back
to the reference, and `paths` says so (end-to-end speed: BENCHMARKS.md, issue 25). 2:4 weights in FP8 run as sparse/linear_fp8.py's SparseLinear24FP8.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..sparse.paths import note
from . import per_token
from .fp8 import ACTIVATIONS, dequantize_fp8, fp8_linear, quantize_fp8


class KeepsFP8(nn.Module):
    """`Module.to(dtype)` (`.half()`, `.bfloat16()`, ...) casts every floating buffer; an FP8 layer's weight and
    scales are data, not activations, and must keep their dtypes. They are handed to `_apply` as integer views of
    their bits, which it moves between devices but never casts. `quantized` names those buffers."""

    quantized: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        dtypes = {name: self._buffers[name].dtype for name in self.quantized if self._buffers.get(name) is not None}
        for name, dtype in dtypes.items():
            self._buffers[name] = self._buffers[name].view({1: torch.uint8, 4: torch.int32}[dtype.itemsize])
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, dtype in dtypes.items():
                self._buffers[name] = self._buffers[name].view(dtype)


def check_activations(activations: str) -> str:
    if activations not in ACTIVATIONS:
        raise ValueError(f"unknown FP8 activations {activations!r}: choose one of {', '.join(ACTIVATIONS)}")
    return activations


def fp8_tensor_cores(device: torch.device) -> bool:
    """Whether `device` is a CUDA GPU with FP8 tensor cores (Ada, compute capability 8.9, and Hopper 9.0 on)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class LinearFP8(KeepsFP8):
    """y = x̂ Qᵀ · s_x · s + b: `weight` Q [out, in] float8_e4m3fn, `weight_scale` s [out] fp32 (powers of two),
    `activations` "fp8" (x̂: each token quantized to FP8 on the fly) or "none" (x as it is; weights only)."""

    quantized = ("weight", "weight_scale")

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 activations: str = "fp8"):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.activations = check_activations(activations)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.paths: dict[str, tuple[str, str]] = {}
        self.name = ""

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: str = "fp8") -> "LinearFP8":
        """Round to nearest with per-channel power-of-two scales (exact for weights already on that grid)."""
        Q, scale = quantize_fp8(linear.weight.data)
        bias = linear.bias.data if linear.bias is not None else None
        return cls(Q, scale.to(Q.device), bias, activations)

    def dense_weight(self) -> torch.Tensor:
        """Q·s in fp32."""
        return dequantize_fp8(self.weight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = None
        if self.activations == "fp8" and not getattr(self, "_refused", False) and fp8_tensor_cores(x.device):
            y = self._scaled_mm(x2)
        if y is None:
            self._note(x.device.type, "reference", "exact fp32 product (prunekit.quantize.fp8.fp8_linear)")
            y = fp8_linear(x2, self.weight, self.weight_scale, self.bias, self.activations)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _scaled_mm(self, x2: torch.Tensor) -> torch.Tensor | None:
        """torch._scaled_mm with row-wise scales (per token, per output channel), or None where it is refused."""
        xq, sx = per_token.quantize(x2)
        try:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=sx, scale_b=self.weight_scale.unsqueeze(0),
                                 out_dtype=torch.bfloat16)
        except (RuntimeError, TypeError, NotImplementedError) as err:  # older GPU or torch: no row-wise scaling
            self._refused = True  # not retried on every call
            self._note("cuda", "reference", f"torch._scaled_mm refused: {str(err).splitlines()[0][:160]}")
            return None
        self._note("cuda", "scaled_mm", "FP8 tensor cores, row-wise scales")
        y = y if self.bias is None else y + self.bias
        return y.to(x2.dtype)

    def _note(self, label: str, path: str, reason: str) -> None:
        if label not in self.paths:  # every call passes here: the record is written once
            note(self.paths, self.name or f"[{self.out_features}×{self.in_features}] fp8", label, path, reason)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8 weights, "
                f"activations={self.activations}, bias={self.bias is not None}")


def to_fp8_linear(linear: nn.Module, activations: str) -> LinearFP8:
    """`linear` (an nn.Linear, or a LinearFP8 whose activations change) as a LinearFP8."""
    if isinstance(linear, LinearFP8):
        linear.activations = check_activations(activations)
        return linear
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"cannot quantize a {type(linear).__name__} to FP8: an nn.Linear is needed")
    return LinearFP8.from_linear(linear, activations)
