"""Decode-time 2:4 matrix products in Triton: y = x Wᵀ for 1–16 token rows, reading the packed
weights (values [out, in/2] + 4-bit group indices, see packing.py) directly.

Decode is memory-bound: the dense product reads out·in·2 bytes of fp16 weight, this kernel reads
out·in·(1 + 1/8) bytes — 0.5625× — so its ceiling is ≈1.78× the dense speed. The activations x are
tiny. Two kernels: `spmm24` (≤ 16 rows) rebuilds each dense weight tile in registers and multiplies on
the tensor cores; `gemv24` (1 row) streams the packed weight once. A 1-row kernel is bound by instructions,
not bytes, unless it spends only a few per value (SASS counts: bench/kernels/gemv_sass.py): an earlier form with a
gather of x, index arithmetic and masks per value (20–25 instructions) reached ≈ 60% of the bandwidth of
`gemv24`, which picks x with byte permutes (≈ 6 per value); the figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib

import torch

from .packing import unpack_24
from .paths import log
from . import timing

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without Triton: callers check `available()`
    triton = None

MAX_ROWS = 16
#: spmm24's launch until `tune` has run for a shape (a guess, not measured)
DEFAULT_CONFIG = {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
#: gemv24 launch configurations: BLOCK_N rows × BLOCK_B index bytes (4 values each) per program and step
GEMV_CONFIGS = [{"BLOCK_N": n, "BLOCK_B": bb, "num_warps": w, "num_stages": st}
                for n in (1, 2, 4, 8) for bb in (64, 128, 256) for w in (1, 2, 4, 8) for st in (2, 3)
                if 32 * w <= n * bb <= 32 * 32 * w]  # 1 to 32 bytes per thread
GEMV_DEFAULT = {"BLOCK_N": 4, "BLOCK_B": 128, "num_warps": 4, "num_stages": 3}  # the tuned best for 4096×4096 (BENCHMARKS.md)
#: best launch configuration per (out, in, rows, dtype) for spmm24, (out, in, "gemv", dtype) for gemv24 and (out, in, "gemv_fp8")
#: for triton_fp8.gemv24_fp8, filled by `time_configs` (measured on the device in use)
TUNED: dict[tuple, dict] = {}
#: per TUNED key, the configurations `time_configs` could not run: {"count": how many, "last": the last one and why}
REJECTED: dict[tuple, dict] = {}
#: spmm24 launch configurations (≤ 16 rows), tuned per weight shape on first use (`tune`, called by SparseLinear24): a
#: 16-row product is still bound by the weight's bytes, so the grid must keep enough loads in flight — up to 16 programs
#: per output block share its inputs (split-K) when the weight has few rows (16 is 5% faster than 8 for 1024×4096 on an
#: H100: bench/results/spmm24_launches_8b_rows16_h100.json)
CONFIGS = [{"BLOCK_N": n, "BLOCK_K": k, "SPLIT_K": s, "num_warps": 4, "num_stages": 3}
           for n in (32, 64, 128) for k in (128, 256) for s in (1, 2, 4, 8, 16)]


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _packed_step(v_ptr, m_ptr, rows, row_ok, group, K, stride_vn, stride_mn):
        """One step of a packed 2:4 weight for the groups `group` of the rows `rows`: the two kept values of each group
        (v0, v1, as stored) and their positions i0, i1 in 0..3 (the group's index nibble); zeros outside the weight."""
        ok = row_ok[:, None] & (group * 4 < K)[None, :]
        v0 = tl.load(v_ptr + rows[:, None] * stride_vn + (2 * group)[None, :], mask=ok, other=0)
        v1 = tl.load(v_ptr + rows[:, None] * stride_vn + (2 * group + 1)[None, :], mask=ok, other=0)
        byte = tl.load(m_ptr + rows[:, None] * stride_mn + (group // 2)[None, :], mask=ok, other=0).to(tl.int32)
        nibble = (byte >> ((group % 2) * 4)[None, :]) & 15
        return v0, v1, nibble & 3, nibble >> 2

    @triton.jit
    def _spmm24_kernel(x_ptr, v_ptr, m_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr, N, K, stride_xb, stride_vn,
                       stride_mn, stride_yb, B, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                       HAS_BIAS: tl.constexpr):
        """y[b, n] = Σ_k W[n, k] x[b, k] (+ bias[n]) for ≤ 16 rows b, W given as 2:4 values + indices.

        Each program owns BLOCK_N output features and 1/SPLIT_K of the inputs. Per step it loads, each as one
        contiguous tile, the BLOCK_K/2 kept values and BLOCK_K/8 index bytes of each row (the only weight traffic)
        and the [16, BLOCK_K] inputs. Writing input k = 4g + p, the product splits into four "phases" p = 0..3:
            y = Σ_p W_p x_p,   W_p[n, g] = v0[n, g]·[i0 = p] + v1[n, g]·[i1 = p],   x_p[g, b] = x[b, 4g + p],
        four [BLOCK_N, BLOCK_K/4] × [BLOCK_K/4, 16] tensor-core products with no gathers: v0/v1, the index nibbles
        and the x_p are taken apart in registers (reshape and split), not loaded with strides.

        Split-K without atomics on the output: each of the SPLIT_K programs of an output block stores its fp32 partial
        sum in its own slot of `ws` [SPLIT_K, B, N], then counts itself in `count[pid_n]` (release/acquire); the last
        to arrive adds the slots in split order (so the sums are reproducible), adds the bias, writes y in its own
        dtype and sets the count back to 0 for the next launch. One kernel, no zeroed buffer, no cast afterwards.
        """
        pid_n, pid_k = tl.program_id(0), tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_ld = tl.minimum(rows, N - 1)  # rows past N re-read row N - 1 and are not stored
        batch = tl.arange(0, 16)
        batch_ok = batch < B
        G: tl.constexpr = BLOCK_K // 4
        acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
        k_per_split = tl.cdiv(K, SPLIT_K * BLOCK_K) * BLOCK_K
        for k0 in range(pid_k * k_per_split, min(K, (pid_k + 1) * k_per_split), BLOCK_K):
            kv = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # value columns: group g's two at 2g, 2g + 1
            vals = tl.load(v_ptr + rows_ld[:, None] * stride_vn + kv[None, :], mask=(kv < K // 2)[None, :], other=0)
            v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, G, 2)))
            kb = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # index bytes: groups 2j (low nibble) and 2j + 1 (high)
            byte = tl.load(m_ptr + rows_ld[:, None] * stride_mn + kb[None, :], mask=(kb < K // 8)[None, :],
                           other=0).to(tl.int32)
            nibble = tl.reshape(tl.join(byte & 15, byte >> 4), (BLOCK_N, G))
            i0, i1 = nibble & 3, nibble >> 2
            kx = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + batch[:, None] * stride_xb + kx[None, :], mask=batch_ok[:, None] & (kx < K)[None, :],
                         other=0.0)  # [16, BLOCK_K]; k = 4g + 2a + c
            x_c0, x_c1 = tl.split(tl.reshape(xt, (16, G, 2, 2)))  # c = 0, 1: [16, G, 2] over a
            x0, x2 = tl.split(x_c0)
            x1, x3 = tl.split(x_c1)
            dt = x_ptr.dtype.element_ty
            w0 = tl.where(i0 == 0, v0, 0.0) + tl.where(i1 == 0, v1, 0.0)
            acc = tl.dot(w0.to(dt), tl.trans(x0), acc)
            w1 = tl.where(i0 == 1, v0, 0.0) + tl.where(i1 == 1, v1, 0.0)
            acc = tl.dot(w1.to(dt), tl.trans(x1), acc)
            w2 = tl.where(i0 == 2, v0, 0.0) + tl.where(i1 == 2, v1, 0.0)
            acc = tl.dot(w2.to(dt), tl.trans(x2), acc)
            w3 = tl.where(i0 == 3, v0, 0.0) + tl.where(i1 == 3, v1, 0.0)
            acc = tl.dot(w3.to(dt), tl.trans(x3), acc)
        out = y_ptr + batch[None, :] * stride_yb + rows[:, None]
        mask = (rows < N)[:, None] & batch_ok[None, :]
        if SPLIT_K == 1:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rows_ld).to(tl.float32)[:, None]
            tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            slot = ws_ptr + batch[None, :] * N + rows[:, None]  # ws[s] is [B, N]
            tl.store(slot + pid_k * B * N, acc, mask=mask)
            tl.debug_barrier()  # every thread's partial is written before the count says so
            if tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel") == SPLIT_K - 1:
                total = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
                for s in tl.static_range(SPLIT_K):  # L2, not L1: the other programs wrote these
                    total += tl.load(slot + s * B * N, mask=mask, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + rows_ld).to(tl.float32)[:, None]
                tl.store(out, total.to(y_ptr.dtype.element_ty), mask=mask)
                tl.atomic_xchg(count_ptr + pid_n, 0)


if triton is not None:
    # The index byte in register M, i0a | i1a << 2 | i0b << 4 | i1b << 6, spread into the nibbles of register c,
    # i0a | i1a << 4 | i0b << 8 | i1b << 12 (scratch register t); shared with triton_fp8's FP8 1-row kernel.
    _SPREAD = """shl.b32 t, M, 4;
    or.b32 t, t, M;
    and.b32 t, t, 0x0F0F;
    shl.b32 c, t, 2;
    or.b32 c, c, t;
    and.b32 c, c, 0x3333;"""
    # One index byte covers two groups a, b (inputs 8j..8j+7) and their 4 kept values. Its 2-bit indices
    # i0a i1a i0b i1b are spread into nibbles c = i0a | i1a << 4 | i0b << 8 | i1b << 12 (two shift-or-and),
    # a byte permute through the table 0x76543210 turns each index i into the selector byte of x's fp16
    # element i (bytes 2i, 2i+1: 0x10, 0x32, 0x54, 0x76), and two more permutes pick [x[i0a], x[i1a]] and
    # [x[i0b], x[i1b]] out of the group's 8 bytes of x. Then v_a·x_a + v_b·x_b in packed 16-bit precision
    # (an fma with zero, then an fma: sm_80 has no bf16x2 multiply) and both halves widened to fp32, where
    # the row's sum accumulates. ≈ 14 instructions for 4 values. Unlike a GEMM, which accumulates exact
    # products in fp32, each product and pair sum is rounded to the 16-bit type: measured relative error
    # ≈ 1.6× cuSPARSELt's (fp16 3e-4 against 2e-4, bf16 2.8e-3 against 1.6e-3; BENCHMARKS.md), and in fp16 a single
    # |v·x| above 65504 overflows.
    _PICK = """{
    .reg .b32 t, c, s, lut, pa, pb, p, z;
    .reg .b16 lo, hi;
    """ + _SPREAD.replace("M", "$4") + """
    mov.b32 lut, 0x76543210;
    prmt.b32 s, lut, 0, c;
    prmt.b32 pa, $5, $6, s;
    shr.b32 s, s, 16;
    prmt.b32 pb, $7, $8, s;
    mov.b32 z, 0;
    fma.rn.TYPE p, $2, pa, z;
    fma.rn.TYPE p, $3, pb, p;
    mov.b32 {lo, hi}, p;
    cvt.f32.SCALAR $0, lo;
    cvt.f32.SCALAR $1, hi;
    }"""
    _PICK_F16 = tl.constexpr(_PICK.replace("TYPE", "f16x2").replace("SCALAR", "f16"))
    _PICK_BF16 = tl.constexpr(_PICK.replace("TYPE", "bf16x2").replace("SCALAR", "bf16"))

    @triton.jit
    def _half(word, k, BF16: tl.constexpr):
        """The k-th 16-bit float of an integer word, as fp32."""
        bits = ((word >> (16 * k)) & 0xFFFF).to(tl.uint16)
        return bits.to(tl.bfloat16 if BF16 else tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _byte_products(vw, m, xab, xcd, BF16: tl.constexpr, EMULATE: tl.constexpr):
        """Σ of the 4 products of each index byte: vw [R, B] 64-bit words of 4 kept values, m [R, B] index
        bytes, xab / xcd [B] the byte's 8 inputs as two 64-bit words. EMULATE computes the same sum with
        plain Triton operations (for the CPU interpreter, which cannot run PTX)."""
        if EMULATE:
            xab2, xcd2 = xab[None, :], xcd[None, :]
            return (_half(vw, 0, BF16) * _half(xab2, m & 3, BF16) + _half(vw, 1, BF16) * _half(xab2, (m >> 2) & 3, BF16)
                    + _half(vw, 2, BF16) * _half(xcd2, (m >> 4) & 3, BF16) + _half(vw, 3, BF16) * _half(xcd2, m >> 6, BF16))
        args = [(vw & 0xFFFFFFFF).to(tl.uint32), (vw >> 32).to(tl.uint32), m.to(tl.uint32),
                tl.broadcast_to((xab & 0xFFFFFFFF).to(tl.uint32)[None, :], vw.shape),
                tl.broadcast_to((xab >> 32).to(tl.uint32)[None, :], vw.shape),
                tl.broadcast_to((xcd & 0xFFFFFFFF).to(tl.uint32)[None, :], vw.shape),
                tl.broadcast_to((xcd >> 32).to(tl.uint32)[None, :], vw.shape)]
        lo, hi = tl.inline_asm_elementwise(_PICK_BF16 if BF16 else _PICK_F16, "=f,=f,r,r,r,r,r,r,r", args,
                                           dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
        return lo + hi

    @triton.jit
    def _gemv24_kernel(x_ptr, v_ptr, m_ptr, bias_ptr, y_ptr, N, K, stride_vn, stride_mn,
                       BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BF16: tl.constexpr, EMULATE: tl.constexpr):
        """y[n] = Σ_j values[n, j] · x[4·(j // 2) + idx(n, j)] for one 16-bit row x, BLOCK_N rows per program,
        BLOCK_B index bytes per step. Values and inputs are read as 64-bit words (4 halves); full steps run
        without masks (rows past N re-read row N − 1 and are not stored), the last partial step with them."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_ld = tl.minimum(rows, N - 1)
        v64 = v_ptr.to(tl.pointer_type(tl.uint64))
        x64 = x_ptr.to(tl.pointer_type(tl.uint64))
        v_row = v64 + rows_ld[:, None] * (stride_vn // 4)
        m_row = m_ptr + rows_ld[:, None] * stride_mn
        nbytes = K // 8
        full = nbytes // BLOCK_B * BLOCK_B
        acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
        for b0 in range(0, full, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B)
            acc += _byte_products(tl.load(v_row + b[None, :]), tl.load(m_row + b[None, :]),
                                  tl.load(x64 + 2 * b), tl.load(x64 + 2 * b + 1), BF16, EMULATE)
        if full < nbytes:
            b = full + tl.arange(0, BLOCK_B)
            ok = b < nbytes
            acc += _byte_products(tl.load(v_row + b[None, :], mask=ok[None, :], other=0),
                                  tl.load(m_row + b[None, :], mask=ok[None, :], other=0),
                                  tl.load(x64 + 2 * b, mask=ok, other=0), tl.load(x64 + 2 * b + 1, mask=ok, other=0),
                                  BF16, EMULATE)
        out = tl.sum(acc, axis=1)
        if HAS_BIAS:
            out += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, out.to(y_ptr.dtype.element_ty), mask=rows < N)


def launch_device(x: torch.Tensor):
    """Context in which a Triton kernel on `x` launches on x's GPU (Triton launches on the current device);
    a no-op elsewhere (the interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def permute_ok(x: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether gemv24 can read x and the values as 64-bit words: 16-bit floats, 8-byte aligned rows."""
    return (x.dtype in (torch.float16, torch.bfloat16) and values.dtype == x.dtype and values.stride(1) == 1
            and values.stride(0) % 4 == 0 and x.data_ptr() % 8 == 0 and values.data_ptr() % 8 == 0)


def gemv24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
           config: dict | None = None) -> torch.Tensor:
    """x [1, in] (fp16 or bf16) times the packed 2:4 weight transposed: [1, out]."""
    if triton is None:
        raise RuntimeError("the 2:4 decode kernel needs Triton")
    x = x.contiguous()
    if not permute_ok(x, values):
        raise ValueError("gemv24 reads 16-bit x and values as 8-byte aligned 64-bit words")
    if x.shape[0] != 1 or x.shape[1] != 2 * values.shape[1] or meta.shape != (values.shape[0], x.shape[1] // 8) \
            or meta.stride(1) != 1:
        raise ValueError(f"gemv24: x {tuple(x.shape)}, values {tuple(values.shape)} and indices "
                         f"{tuple(meta.shape)} do not match a [1, in] × 2:4 [out, in] product")
    N, K = values.shape[0], x.shape[1]
    cfg = config or TUNED.get((N, K, "gemv", x.dtype)) or GEMV_DEFAULT
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    with launch_device(x):
        _gemv24_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
            x, values, meta, bias if bias is not None else values, y, N, K, values.stride(0), meta.stride(0),
            BLOCK_N=cfg["BLOCK_N"], BLOCK_B=cfg["BLOCK_B"], HAS_BIAS=bias is not None,
            BF16=x.dtype == torch.bfloat16, EMULATE=not x.is_cuda, num_warps=cfg["num_warps"],
            num_stages=cfg.get("num_stages", 3))
    return y


def spmm24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
           config: dict | None = None) -> torch.Tensor:
    """x [rows ≤ 16, in] times the packed 2:4 weight transposed: [rows, out]."""
    if triton is None:
        raise RuntimeError("the 2:4 decode kernel needs Triton")
    rows, K = x.shape
    if rows > MAX_ROWS:
        raise ValueError(f"spmm24 serves at most {MAX_ROWS} rows, got {rows}")
    x = x.contiguous()
    N = values.shape[0]
    cfg = config or TUNED.get((N, K, rows, x.dtype)) or TUNED.get((N, K, MAX_ROWS, x.dtype)) or DEFAULT_CONFIG
    split = cfg.get("SPLIT_K", 1)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), split)
    y = torch.empty(rows, N, dtype=x.dtype, device=x.device)
    # split-K: one fp32 slot of partial sums per split, and the arrival counts of the output blocks
    ws = torch.empty(split, rows, N, dtype=torch.float32, device=x.device) if split > 1 else y
    count = arrival_counts(x.device, grid[0]) if split > 1 else y
    with launch_device(x):
        _spmm24_kernel[grid](x, values, meta, bias if bias is not None else values, y, ws, count, N, K,
                             x.stride(0), values.stride(0), meta.stride(0), y.stride(0), rows,
                             BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], SPLIT_K=split,
                             HAS_BIAS=bias is not None, num_warps=cfg["num_warps"],
                             num_stages=cfg.get("num_stages", 3))
    return y


#: per device, spmm24's split-K arrival counts: zero between launches (each launch's last program resets the counts it
#: used), so one buffer serves every layer of a device as long as its launches are ordered on one stream. Allocated
#: once at a fixed size and never replaced: CUDA graphs captured with it keep its address.
_COUNTS: dict[torch.device, torch.Tensor] = {}
MAX_BLOCKS = 65536  # output blocks of one launch: 2M outputs at the smallest tile (256 KB of counts)


def arrival_counts(device: torch.device, blocks: int) -> torch.Tensor:
    """The zeroed int32 counts of spmm24's split-K on `device` (one per output block), allocated on first use."""
    if blocks > MAX_BLOCKS:
        raise ValueError(f"spmm24 split-K serves at most {MAX_BLOCKS} output blocks, got {blocks}")
    counts = _COUNTS.get(device)
    if counts is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            # a capture records the zeroing without running it: the counts would start as garbage
            raise RuntimeError("spmm24's first split-K launch on a device must run eagerly, not in a CUDA graph capture")
        counts = _COUNTS[device] = torch.zeros(MAX_BLOCKS, dtype=torch.int32, device=device)
    return counts


def dense_product(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """x Wᵀ in fp32 for the packed weight, unpacked `chunk` output rows at a time (never the whole weight at once)."""
    return torch.cat([x.float() @ unpack_24(values[i:i + chunk], meta[i:i + chunk]).float().T
                      for i in range(0, values.shape[0], chunk)], dim=1)


def tune(values: torch.Tensor, meta: torch.Tensor, rows: int, configs: list[dict] | None = None,
         kernel: str = "spmm") -> tuple[dict, float]:
    """Time every launch configuration for this weight shape and row count; remember the best. A configuration
    whose result is not the dense product's (relative error ≥ 1e-2) is rejected before it is timed.
    Returns (best config, its milliseconds). `kernel` is "spmm" (≤ 16 rows) or "gemv" (1 row, 16-bit)."""

    # cycle through copies of the weight so that the timings are not served from the L2 cache
    weights = [(values.clone(), meta.clone()) for _ in range(timing.copies_past_l2(values.numel() * values.element_size()))]
    g = torch.Generator(device=values.device).manual_seed(0)  # leaves the global random state alone
    x = torch.randn(rows, 2 * values.shape[1], dtype=values.dtype, device=values.device, generator=g)
    fn = gemv24 if kernel == "gemv" else spmm24
    key = (values.shape[0], 2 * values.shape[1], "gemv", values.dtype) if kernel == "gemv" else \
        (values.shape[0], 2 * values.shape[1], rows, values.dtype)
    ref = dense_product(x, values, meta)
    ref_norm = ref.norm().item()

    def calls(cfg):
        err = (fn(x, values, meta, config=cfg).float() - ref).norm().item()
        if not err <= 1e-2 * ref_norm:  # a launch that computes something else is never chosen (16-bit rounding: ≈ 3e-3)
            raise ValueError(f"relative error {err / max(ref_norm, 1e-30):.1e} against the dense product")
        return [lambda v=v, m=m: fn(x, v, m, config=cfg) for v, m in weights]

    return time_configs(key, kernel, calls, configs or (GEMV_CONFIGS if kernel == "gemv" else CONFIGS))


def time_configs(key: tuple, kernel: str, calls, configs: list[dict]) -> tuple[dict, float]:
    """The fastest of `configs`, timed as `calls(cfg)` (the kernel on each weight copy), kept in TUNED[key]; the
    configurations that could not run are counted in REJECTED[key]. Returns (best config, its milliseconds)."""
    timings, rejected, last = [], 0, ""
    for cfg in configs:
        try:
            timings.append((timing.time_calls(calls(cfg), repeats=10), cfg))
        except Exception as e:  # a configuration the compiler rejects (e.g. out of shared memory) is skipped
            rejected += 1
            last = f"{cfg}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]
    REJECTED[key] = {"count": rejected, "last": last}
    if rejected:
        log(f"tune {kernel} {key[:2]}: {rejected} of {rejected + len(timings)} launch configurations rejected "
            f"(last: {last})")
    if not timings:
        raise RuntimeError(f"no {kernel} launch configuration compiled for this GPU ({rejected} rejected; "
                           f"last: {last})")
    ms, best = min(timings, key=lambda t: t[0])
    TUNED[key] = best
    return best, ms
