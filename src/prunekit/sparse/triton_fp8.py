"""Decode-time 2:4 + FP8 products in Triton: y = (x̂ Qᵀ) · s_x · s_w (+ b) for 1–16 token rows, reading the packed
FP8 weight — values [out, in/2] as E4M3 bytes and 4-bit group indices (packing.py) — directly.

At batch 1 the product is memory-bound: the FP8 2:4 weight is out·in·(1/2 + 1/8) bytes, 0.3125× the dense bf16
weight's out·in·2, so its ceiling is 3.2× dense bf16. Each E4M3 byte is decoded in registers to fp16, which is exact
(every E4M3 value is an fp16 value: 3 mantissa bits, exponents 2⁻⁹ … 448); the inputs come quantized per token
(prunekit.quantize.fp8.quantize_per_token) and held in fp16, exact likewise. The tensor cores multiply fp16 and
accumulate in fp32, where every product of two E4M3 values is exact, so the result equals the reference product
(prunekit.quantize.fp8.fp8_linear) up to the order of the fp32 sum. The phase decomposition (four products with no
gather from the weight) is triton_decode.spmm24's.

`gemv24_fp8` (1 row, GPUs of compute capability ≥ 8.9) is triton_decode.gemv24's form for FP8: it streams the packed
weight as 32-bit words of 4 E4M3 values, picks each value's input out of x̂'s E4M3 bytes with one byte permute per 4
values and decodes pairs of E4M3 bytes with cvt.rn.f16x2.e4m3x2 (a PTX instruction of sm_89 on; Ampere has no FP8
conversion, so it does not compile for sm_80); the products and sums are fp32, exact per product as above. Its launch
configuration is tuned per weight shape on first use like gemv24's (`tune_gemv`). It spends about as many instructions
per value as gemv24 (SASS counts above _PICK_FP8) on 0.56× its bytes, so expect it bound by instructions, near gemv24's
time for the shape rather than at its own bytes' bandwidth. Not yet measured on a GPU: the numerics are checked in
Triton's interpreter, the PTX by an emulation of its instructions, its build for sm_89/sm_90 by ptxas (tests/sparse).
"""

from __future__ import annotations

import torch

from ..quantize.fp8 import quantize_per_token
from . import timing, triton_decode
from .triton_decode import MAX_ROWS, launch_device

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without Triton: callers check `available()`
    triton = None

if triton is not None:  # shared with triton_decode's kernels: the packed-weight step, the index spread of gemv24
    from .triton_decode import _SPREAD, _packed_step

#: launch configuration (not tuned yet: no GPU measurement of this kernel exists)
DEFAULT_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}
#: gemv24_fp8 launch configurations: BLOCK_N rows × BLOCK_B index bytes per program and step, 1 to 32 index bytes per
#: thread; gemv24's grid at twice its index bytes per step (128 to 512), since an FP8 index byte carries 5 weight bytes,
#: not 9
GEMV_CONFIGS = [{"BLOCK_N": n, "BLOCK_B": bb, "num_warps": w, "num_stages": st}
                for n in (1, 2, 4, 8) for bb in (128, 256, 512) for w in (1, 2, 4, 8) for st in (2, 3)
                if 32 * w <= n * bb <= 32 * 32 * w]
#: until `tune_gemv` has run for a shape (a guess, not measured): gemv24's tuned best with twice its index bytes per step
GEMV_DEFAULT = {"BLOCK_N": 4, "BLOCK_B": 256, "num_warps": 4, "num_stages": 3}


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


if triton is not None:
    # One index byte covers two groups a, b: inputs 8j..8j+7, one 64-bit word of x̂'s E4M3 bytes (xa: bytes 0-3, xb:
    # 4-7), and their 4 kept values, one 32-bit word. Its 2-bit indices are spread into the nibbles of c (gemv24's
    # _SPREAD), 4 is added to group b's two (its inputs are bytes 4-7 of xb:xa), and one byte permute picks
    # x̂[i0a] x̂[i1a] x̂[4 + i0b] x̂[4 + i1b]: the inputs of the 4 values, in the values' order. cvt.rn.f16x2.e4m3x2
    # (sm_89 on) decodes two E4M3 bytes into two fp16 (exact), each is widened to fp32, and 4 fp32 fmas add the products
    # to the element's sum in value order. Each product is exact in fp32 (at most 8 significant bits, 2⁻¹⁸ to 448²);
    # in fp16 a single one could overflow (448² > 65504). sm_90 SASS per 4 values: 4 F2FP (decodes), 8 HADD2
    # (widenings), 4 FFMA and ≈ 5 integer operations (spread, permute) ≈ 21; with loads and addresses the main loop
    # spends ≈ 6.2–7.4 instructions per value (gemv24's: ≈ 5.3–6.1) for half gemv24's bytes per value, so it is
    # likely bound by instructions (cuobjdump of Triton's sm_90 cubin, aligned launches; not measured on a GPU).
    _PICK_FP8 = tl.constexpr("""{
    .reg .b32 t, c, px, w01, w23, x01, x23;
    .reg .b16 va, vb, xa, xb, w0, w1, w2, w3, x0, x1, x2, x3;
    .reg .f32 fw, fx;
    """ + _SPREAD.replace("M", "$2") + """
    or.b32 c, c, 0x4400;
    prmt.b32 px, $3, $4, c;
    mov.b32 {va, vb}, $1;
    mov.b32 {xa, xb}, px;
    cvt.rn.f16x2.e4m3x2 w01, va;
    cvt.rn.f16x2.e4m3x2 w23, vb;
    cvt.rn.f16x2.e4m3x2 x01, xa;
    cvt.rn.f16x2.e4m3x2 x23, xb;
    mov.b32 {w0, w1}, w01;
    mov.b32 {w2, w3}, w23;
    mov.b32 {x0, x1}, x01;
    mov.b32 {x2, x3}, x23;
    mov.f32 $0, $5;
    cvt.f32.f16 fw, w0;
    cvt.f32.f16 fx, x0;
    fma.rn.f32 $0, fw, fx, $0;
    cvt.f32.f16 fw, w1;
    cvt.f32.f16 fx, x1;
    fma.rn.f32 $0, fw, fx, $0;
    cvt.f32.f16 fw, w2;
    cvt.f32.f16 fx, x2;
    fma.rn.f32 $0, fw, fx, $0;
    cvt.f32.f16 fw, w3;
    cvt.f32.f16 fx, x3;
    fma.rn.f32 $0, fw, fx, $0;
    }""")

    @triton.jit
    def _fp8_byte_products(acc, vw, m, xw, EMULATE: tl.constexpr):
        """acc + the 4 products of each index byte, added in value order: vw [R, B] 32-bit words of 4 kept E4M3 values,
        m [R, B] their index bytes, xw [B] the byte's 8 E4M3 inputs as one 64-bit word. EMULATE computes the same with
        plain Triton operations (for the CPU interpreter, which cannot run PTX)."""
        if EMULATE:
            x = xw[None, :]
            for k in tl.static_range(4):  # value k of the word; its input is byte pos of the 8 (group k // 2)
                pos = ((m >> (2 * k)) & 3).to(tl.uint64) + 4 * (k // 2)
                acc += _e4m3_to_f32((vw >> (8 * k)) & 0xFF) * _e4m3_to_f32((x >> (8 * pos)) & 0xFF)
            return acc
        xa = tl.broadcast_to((xw & 0xFFFFFFFF).to(tl.uint32)[None, :], vw.shape)
        xb = tl.broadcast_to((xw >> 32).to(tl.uint32)[None, :], vw.shape)
        return tl.inline_asm_elementwise(_PICK_FP8, "=f,r,r,r,r,f", [vw, m.to(tl.uint32), xa, xb, acc],
                                         dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _gemv24_fp8_kernel(x_ptr, v_ptr, m_ptr, sx_ptr, sw_ptr, bias_ptr, y_ptr, N, K, stride_vn, stride_mn,
                           BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                           EMULATE: tl.constexpr):
        """y[n] = (Σ_j Q[n, j] · x̂[4·(j // 2) + idx(n, j)]) · s_x · s_w[n] (+ bias[n]) for one row x̂ of E4M3 bytes, Q the
        E4M3 2:4 values; BLOCK_N rows per program, BLOCK_B index bytes per step. Values are read as 32-bit words (4
        values), x̂ as 64-bit words (8 inputs); full steps run without masks (rows past N re-read row N − 1 and are not
        stored), the last partial step with them."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_ld = tl.minimum(rows, N - 1)
        v32 = v_ptr.to(tl.pointer_type(tl.uint32))
        x64 = x_ptr.to(tl.pointer_type(tl.uint64))
        v_row = v32 + rows_ld[:, None] * (stride_vn // 4)
        m_row = m_ptr + rows_ld[:, None] * stride_mn
        nbytes = K // 8
        full = nbytes // BLOCK_B * BLOCK_B
        acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
        for b0 in range(0, full, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B)
            acc = _fp8_byte_products(acc, tl.load(v_row + b[None, :]), tl.load(m_row + b[None, :]), tl.load(x64 + b),
                                     EMULATE)
        if full < nbytes:
            b = full + tl.arange(0, BLOCK_B)
            ok = b < nbytes
            acc = _fp8_byte_products(acc, tl.load(v_row + b[None, :], mask=ok[None, :], other=0),
                                     tl.load(m_row + b[None, :], mask=ok[None, :], other=0),
                                     tl.load(x64 + b, mask=ok, other=0), EMULATE)
        out = tl.sum(acc, axis=1) * tl.load(sx_ptr) * tl.load(sw_ptr + rows_ld)  # (x̂ Qᵀ · s_x) · s_w, fp8_linear's order
        if HAS_BIAS:
            out += tl.load(bias_ptr + rows_ld).to(tl.float32)
        tl.store(y_ptr + rows, out.to(y_ptr.dtype.element_ty), mask=rows < N)


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


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A one-byte tensor (float8_e4m3fn or uint8) as its uint8 view."""
    if t.element_size() != 1:
        raise ValueError(f"expected E4M3 bytes (float8_e4m3fn or uint8), got {t.dtype}")
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def gemv_key(values: torch.Tensor) -> tuple:
    """The triton_decode.TUNED key of gemv24_fp8's launch configuration for this packed weight: (out, in, "gemv_fp8")."""
    return values.shape[0], 2 * values.shape[1], "gemv_fp8"


def gemv24_fp8(xq: torch.Tensor, sx: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, out_dtype=torch.bfloat16, config: dict | None = None) -> torch.Tensor:
    """x̂ [1, in] (float8_e4m3fn, per-token scale sx [1, 1]) times the packed FP8 2:4 weight (values [out, in/2]
    float8_e4m3fn or their uint8 bytes) transposed, each output channel scaled by weight_scale [out]: [1, out] in
    `out_dtype`. Launch configuration: `config`, else the one `tune_gemv` found for this shape, else GEMV_DEFAULT."""
    if triton is None:
        raise RuntimeError("the FP8 2:4 decode kernel needs Triton")
    xb, vb = _bytes(xq), _bytes(values)
    N, K = values.shape[0], xq.shape[-1]
    if xq.shape != (1, K) or K % 8 or K != 2 * values.shape[1] or meta.shape != (N, K // 8) or meta.stride(1) != 1:
        raise ValueError(f"gemv24_fp8: x {tuple(xq.shape)}, values {tuple(values.shape)} and indices "
                         f"{tuple(meta.shape)} do not match a [1, in] × 2:4 [out, in] product")
    if xb.stride(1) != 1 or xb.data_ptr() % 8 or vb.stride(1) != 1 or vb.stride(0) % 4 or vb.data_ptr() % 4:
        raise ValueError("gemv24_fp8 reads x̂ as 8-byte aligned 64-bit words and the values as 4-byte aligned "
                         "32-bit words")
    cfg = config or triton_decode.TUNED.get(gemv_key(values)) or GEMV_DEFAULT
    y = torch.empty(1, N, dtype=out_dtype, device=xq.device)
    sw = weight_scale.float().contiguous()
    with launch_device(xq):
        _gemv24_fp8_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
            xb, vb, meta, sx.reshape(-1).float().contiguous(), sw, bias if bias is not None else sw, y, N, K,
            vb.stride(0), meta.stride(0), BLOCK_N=cfg["BLOCK_N"], BLOCK_B=cfg["BLOCK_B"], HAS_BIAS=bias is not None,
            EMULATE=not xq.is_cuda, num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 3))
    return y


def tune_gemv(values: torch.Tensor, meta: torch.Tensor, weight_scale: torch.Tensor,
              configs: list[dict] | None = None) -> tuple[dict, float]:
    """Time every gemv24_fp8 launch configuration (GEMV_CONFIGS) for this weight shape and keep the fastest in
    triton_decode.TUNED[gemv_key(values)] (triton_decode.time_configs, as gemv24's are tuned); returns (config,
    milliseconds). Cycles through copies of the weight so that the timings are not served from the L2 cache."""
    copies = timing.copies_past_l2(values.numel() * values.element_size() + meta.numel())
    weights = [(values.clone(), meta.clone()) for _ in range(copies)]
    g = torch.Generator(device=values.device).manual_seed(0)  # leaves the global random state alone
    xq, sx = quantize_per_token(torch.randn(1, 2 * values.shape[1], device=values.device, generator=g))

    def calls(cfg):
        return [lambda v=v, m=m: gemv24_fp8(xq, sx, v, m, weight_scale, config=cfg) for v, m in weights]

    return triton_decode.time_configs(gemv_key(values), "gemv_fp8", calls, configs or GEMV_CONFIGS)
