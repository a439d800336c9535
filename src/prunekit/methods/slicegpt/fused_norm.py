"""RMS normalisation of each row in one Triton kernel (CUDA inference of the sliced model).

    y = x / sqrt(‖x‖² / d + ε) (· w)

with d the width the mean is taken over (the sliced model's RMSN uses the ORIGINAL width, not x's k
columns) and an optional weight w. transformers' RMSNorm and the unfused RMSN run this as ~8 elementwise
kernels (cast, square, sum, divide, add, rsqrt, multiply, cast); at decode time a small model is bound
by kernel launches, so one kernel per norm is a real saving. torch's own fused `F.rms_norm` is not used:
with torch 2.11 it did not return within minutes on the GPU (its CuTe-DSL override compiles per shape).
Computed in fp32, stored in x's dtype, like the unfused path.
"""

from __future__ import annotations

import torch

from ...sparse.triton_decode import launch_device

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without Triton: callers check `available()`
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, K, stride_x, stride_y, inv_d, eps,
                         BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr):
        """One program per row: y = x · rsqrt(Σ x² / d + ε) (· w), the row held in registers."""
        row = tl.program_id(0).to(tl.int64)  # 64-bit offsets: rows × stride may pass 2³¹
        cols = tl.arange(0, BLOCK)
        ok = cols < K
        x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        y = x * tl.rsqrt(tl.sum(x * x, axis=0) * inv_d + eps)
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, mean_dim: int, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """x / sqrt(‖x‖² / mean_dim + eps) over the last dimension (times `weight` if given), one kernel."""
    if triton is None:
        raise RuntimeError("the fused RMS norm needs Triton")
    k = x.shape[-1]
    if x.numel() == 0:
        return torch.empty_like(x)
    if weight is not None:
        if weight.shape != (k,):
            raise ValueError(f"the norm's weight must have shape ({k},), got {tuple(weight.shape)}")
        weight = weight.contiguous()
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    with launch_device(x):
        _rms_norm_kernel[(x2.shape[0],)](x2, weight if weight is not None else x2, y, k, x2.stride(0), y.stride(0),
                                         1.0 / mean_dim, eps, BLOCK=triton.next_power_of_2(k),
                                         HAS_WEIGHT=weight is not None, num_warps=4 if k <= 4096 else 8)
    return y.view(x.shape)
