"""Decode-time 2:4 + FP8 products in Triton: y = (x̂ Qᵀ) · s_x · s_w (+ b) for 1–16 token rows, reading the packed
FP8 weight — values [out, in/2] as E4M3 bytes and 4-bit group indices (packing.py) — directly.

At batch 1 the product is memory-bound: the FP8 2:4 weight is out·in·(1/2 + 1/8) bytes, 0.3125× the dense bf16
weight's out·in·2, so its ceiling is 3.2× dense bf16. Each E4M3 byte is decoded in registers to fp16, which is exact
(every E4M3 value is an fp16 value: 3 mantissa bits, exponents 2⁻⁹ … 448); the inputs come quantized per token
(prunekit.quantize.fp8.quantize_per_token) and held in fp16, exact likewise. The tensor cores multiply fp16 and
accumulate in fp32, where every product of two E4M3 values is exact, so the result equals the reference product
(prunekit.quantize.fp8.fp8_linear) up to the order of the fp32 sum. The phase decomposition (four products with no
gather from the weight) is triton_decode.spmm24's.
"""

from __future__ import annotations

import torch

from .triton_decode import MAX_ROWS, launch_device

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without Triton: callers check `available()`
    triton = None

if triton is not None:  # the packed-weight step shared with triton_decode._spmm24_kernel
    from .triton_decode import _packed_step

#: launch configuration (not tuned yet: no GPU measurement of this kernel exists)
DEFAULT_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _e4m3_to_f32(byte):
        """The value of an E4M3 byte (sign, 4 exponent bits with bias 7, 3 mantissa bits): normal numbers by
        moving the fields into an fp32 word (exponent bias 127 = 7 + 120), subnormals (exponent 0) as m · 2⁻⁹.
        The NaN codes are never written by prunekit's quantizer (it saturates at ±448)."""
        b = byte.to(tl.uint32)
        sign, e, m = b >> 7, (b >> 3) & 15, b & 7
        normal = ((sign << 31) | ((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
        sub = m.to(tl.float32) * 0.001953125
        return tl.where(e == 0, tl.where(sign == 1, -sub, sub), normal)

    @triton.jit
    def _spmm24_fp8_kernel(x_ptr, v_ptr, m_ptr, sx_ptr, sw_ptr, bias_ptr, y_ptr, N, K, stride_xb, stride_vn,
                           stride_mn, stride_yb, B, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           HAS_BIAS: tl.constexpr):
        """y[b, n] = (Σ_k Q[n, k] x̂[b, k]) · s_x[b] · s_w[n] (+ bias[n]) for ≤ 16 rows b; Q given as E4M3 2:4 values
        + indices, x̂ in fp16. With k = 4g + p: y = Σ_p Q_p x̂_p, Q_p[n, g] = v0[n, g]·[i0 = p] + v1[n, g]·[i1 = p]."""
        pid_n = tl.program_id(0)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        batch = tl.arange(0, 16)
        batch_ok = batch < B
        G: tl.constexpr = BLOCK_K // 4
        acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            group = k0 // 4 + tl.arange(0, G)
            b0, b1, i0, i1 = _packed_step(v_ptr, m_ptr, rows, row_ok, group, K, stride_vn, stride_mn)
            v0, v1 = _e4m3_to_f32(b0), _e4m3_to_f32(b1)
            x_ok = batch_ok[None, :] & (group * 4 < K)[:, None]
            x_base = x_ptr + batch[None, :] * stride_xb + (4 * group)[:, None]
            for p in tl.static_range(4):
                q_p = (tl.where(i0 == p, v0, 0.0) + tl.where(i1 == p, v1, 0.0)).to(tl.float16)
                x_p = tl.load(x_base + p, mask=x_ok, other=0.0)  # [G, 16] fp16
                acc = tl.dot(q_p, x_p, acc)
        sx = tl.load(sx_ptr + batch, mask=batch_ok, other=0.0)
        sw = tl.load(sw_ptr + rows, mask=row_ok, other=0.0)
        acc = acc * sx[None, :] * sw[:, None]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        out = y_ptr + batch[None, :] * stride_yb + rows[:, None]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & batch_ok[None, :])


def spmm24_fp8(xq: torch.Tensor, sx: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, out_dtype=torch.bfloat16, config: dict | None = None) -> torch.Tensor:
    """x̂ [rows ≤ 16, in] (float8_e4m3fn, or fp16 holding FP8 values) with per-row scales sx [rows, 1] times the
    packed FP8 2:4 weight (values [out, in/2] float8_e4m3fn or their uint8 bytes) transposed, each output channel
    scaled by weight_scale [out]: [rows, out] in `out_dtype`."""
    if triton is None:
        raise RuntimeError("the FP8 2:4 decode kernel needs Triton")
    rows, K = xq.shape
    if rows > MAX_ROWS:
        raise ValueError(f"spmm24_fp8 serves at most {MAX_ROWS} rows, got {rows}")
    N = values.shape[0]
    if K != 2 * values.shape[1] or meta.shape != (N, K // 8) or values.stride(1) != 1 or meta.stride(1) != 1:
        raise ValueError(f"spmm24_fp8: x {tuple(xq.shape)}, values {tuple(values.shape)} and indices "
                         f"{tuple(meta.shape)} do not match a [rows, in] × 2:4 [out, in] product")
    x16 = xq.to(torch.float16).contiguous()  # exact: E4M3 ⊂ fp16
    bytes_ = values.view(torch.uint8) if values.dtype != torch.uint8 else values
    cfg = config or DEFAULT_CONFIG
    y = torch.empty(rows, N, dtype=out_dtype, device=xq.device)
    with launch_device(xq):
        _spmm24_fp8_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
            x16, bytes_, meta, sx.reshape(-1).float().contiguous(), weight_scale.float().contiguous(),
            bias if bias is not None else weight_scale, y, N, K, x16.stride(0), bytes_.stride(0), meta.stride(0),
            y.stride(0), rows, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], HAS_BIAS=bias is not None,
            num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 3))
    return y
