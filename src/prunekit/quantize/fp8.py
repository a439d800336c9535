"""FP8 (E4M3) numbers: weights with one scale per output channel, activations with one scale per token.

Weights. W [out, in] is stored as Q = fp8(W / s) (float8_e4m3fn, round to nearest even, saturated at ±448) with
    s_i = 2^⌈log2(max_j |W_ij| / 448)⌉,
the per-channel amax/448 scale rounded up to a power of two. E4M3 has the same relative precision in every binade,
so the power of two costs no precision: it only lets a row's largest |W_ij|/s land anywhere in (224, 448] instead
of exactly at 448 (one binade of subnormals less at the bottom of the range). What it buys is exactness: Q·s needs
4 significant bits, so it is exact in bf16 and fp32 (and in fp16 for s ≥ 2^-15). A model that holds its quantized
weights Q·s in its own dtype therefore *is* the quantized model, and quantizing it again gives back the same Q·s
bit for bit (with s' = s/2^k and Q' = Q·2^k where the row's largest weight shrank). That is what lets SparseGPT
quantize inside its column pass and still hand back ordinary weights (pruners/sparsegpt.py).

Activations (`activations="fp8"`, at inference): each token x is quantized on the fly, x̂ = fp8(x / s_x) with
s_x = max_j |x_j| / 448, and y = (x̂ Qᵀ) · s_x · s + b — the W8A8 product that Hopper's FP8 tensor cores run.
`fp8_linear` is that product computed exactly in fp32 (the reference every kernel is checked against).
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
#: what a model's linear layers do with their inputs: "fp8" (per-token dynamic FP8, W8A8) or "none" (weights only)
ACTIVATIONS = ("fp8", "none")


def fp8_scale(W: torch.Tensor, headroom: int = 0) -> torch.Tensor:
    """s [out] fp32: per output channel, the smallest power of two ≥ max_j |W_ij| / 448, times 2^headroom
    (1 for an all-zero row). Each binade of headroom lets the row's weights grow by 2× before they saturate,
    at no cost in precision but one binade of subnormals at the bottom (module docstring)."""
    amax = W.detach().abs().amax(dim=1).float()
    mantissa, exponent = torch.frexp(amax / E4M3_MAX)  # = mantissa · 2^exponent, mantissa in [0.5, 1)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)  # already a power of two
    scale = torch.ldexp(torch.ones_like(amax), exponent + headroom)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """x (already divided by its scale) as float8_e4m3fn, saturated at ±448, with -0.0 written as +0.0 (a weight
    that rounds to zero is a zero, and the compact format's 2:4 and bitmask packings count only +0.0 as one)."""
    bits = x.float().clamp(-E4M3_MAX, E4M3_MAX).to(FP8).view(torch.uint8)
    return bits.masked_fill(bits == 0x80, 0).view(FP8)


def quantize_fp8(W: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q [out, in] float8_e4m3fn, s [out] fp32) with W ≈ Q·s, round to nearest; `scale` defaults to fp8_scale(W)."""
    scale = fp8_scale(W) if scale is None else scale.float()
    return to_fp8(W.float() / scale.unsqueeze(1)), scale


def dequantize_fp8(Q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Q·s in fp32 (exact)."""
    return Q.float() * scale.float().unsqueeze(1)


def round_to_fp8(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """w rounded to the FP8 grid of `scale` (broadcast against w), in w's dtype: quantize and dequantize at once,
    the step GPTQ takes per column (one column of W holds one weight of every output channel: scale [out])."""
    return (to_fp8(w / scale).float() * scale).to(w.dtype)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂ [rows, in] float8_e4m3fn, s_x [rows, 1] fp32): each row scaled by its own amax/448, dynamically."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return to_fp8(x.float() / scale), scale


def fp8_linear(x: torch.Tensor, Q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
               activations: str = "fp8") -> torch.Tensor:
    """y = x̂ Qᵀ · s_x · s + b (activations "fp8") or x Qᵀ · s + b ("none"), computed in fp32 and returned in x's
    dtype: the reference product of an FP8 linear layer, x [rows, in], Q [out, in]. The scales multiply after
    the product, as a kernel applies them; with power-of-two weight scales that equals dequantizing Q first."""
    if activations == "fp8":
        xq, sx = quantize_per_token(x)
        y = (xq.float() @ Q.float().t()) * sx
    else:
        y = x.float() @ Q.float().t()
    y = y * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
