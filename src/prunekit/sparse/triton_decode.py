"""Decode-time 2:4 matrix products in Triton: y = x Wᵀ for 1–16 token rows, reading the packed
weights (values [out, in/2] + 4-bit group indices, see packing.py) directly.

Decode is memory-bound: the dense product reads out·in·2 bytes of fp16 weight, this kernel reads
out·in·(1 + 1/8) bytes — 0.5625× — so its ceiling is ≈1.78× the dense speed. The activations x are
tiny; the kernel rebuilds each dense weight tile in registers and multiplies on the tensor cores.
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without Triton: callers check `available()`
    triton = None

MAX_ROWS = 16
DEFAULT_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
GEMV_DEFAULT = {"BLOCK_N": 4, "BLOCK_V": 512, "num_warps": 2, "num_stages": 3}  # best on most shapes (H100)
GEMV_CONFIGS = [{"BLOCK_N": n, "BLOCK_V": v, "num_warps": w, "num_stages": 3, "META_DIRECT": meta}
                for n in (1, 2, 4, 8, 16) for v in (256, 512, 1024, 2048) for w in (2, 4, 8) for meta in (0, 1)
                # the per-value accumulator must fit in registers: at most 64 fp32 per thread
                if n * v <= 64 * 32 * w]
#: best launch configuration per (out, in, rows), filled by `tune` (measured on the device in use)
TUNED: dict[tuple[int, int, int], dict] = {}
CONFIGS = [{"BLOCK_N": n, "BLOCK_K": k, "SPLIT_K": s, "num_warps": 4, "num_stages": st}
           for n in (16, 32, 64) for k in (128, 256) for s in (1, 2) for st in (2, 4)]


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _spmm24_kernel(x_ptr, v_ptr, m_ptr, bias_ptr, y_ptr, N, K, stride_xb, stride_vn, stride_mn, stride_yb,
                       B, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                       HAS_BIAS: tl.constexpr):
        """y[b, n] = Σ_k W[n, k] x[b, k] (+ bias[n]) for ≤ 16 rows b, W given as 2:4 values + indices.

        Each program owns BLOCK_N output features and 1/SPLIT_K of the inputs. Per step it loads the
        BLOCK_K/2 kept values and BLOCK_K/8 index bytes of each row (the only weight traffic). Writing
        input k = 4g + p, the product splits into four "phases" p = 0..3:
            y = Σ_p W_p x_p,   W_p[n, g] = v0[n, g]·[i0 = p] + v1[n, g]·[i1 = p],   x_p[g, b] = x[b, 4g + p],
        four [BLOCK_N, BLOCK_K/4] × [BLOCK_K/4, 16] tensor-core products with no gathers from the weight.
        """
        pid_n, pid_k = tl.program_id(0), tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        batch = tl.arange(0, 16)
        batch_ok = batch < B
        G: tl.constexpr = BLOCK_K // 4
        acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
        k_per_split = tl.cdiv(K, SPLIT_K * BLOCK_K) * BLOCK_K
        for k0 in range(pid_k * k_per_split, min(K, (pid_k + 1) * k_per_split), BLOCK_K):
            group = k0 // 4 + tl.arange(0, G)
            ok = row_ok[:, None] & (group * 4 < K)[None, :]
            v0 = tl.load(v_ptr + rows[:, None] * stride_vn + (2 * group)[None, :], mask=ok, other=0.0)
            v1 = tl.load(v_ptr + rows[:, None] * stride_vn + (2 * group + 1)[None, :], mask=ok, other=0.0)
            byte = tl.load(m_ptr + rows[:, None] * stride_mn + (group // 2)[None, :], mask=ok, other=0).to(tl.int32)
            nibble = (byte >> ((group % 2) * 4)[None, :]) & 15
            i0, i1 = nibble & 3, nibble >> 2
            x_ok = batch_ok[None, :] & (group * 4 < K)[:, None]
            x_base = x_ptr + batch[None, :] * stride_xb + (4 * group)[:, None]
            for p in tl.static_range(4):
                w_p = tl.where(i0 == p, v0, 0.0) + tl.where(i1 == p, v1, 0.0)
                x_p = tl.load(x_base + p, mask=x_ok, other=0.0)  # [G, 16]
                acc = tl.dot(w_p.to(x_ptr.dtype.element_ty), x_p, acc)
        if HAS_BIAS:
            if pid_k == 0:
                acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        out = y_ptr + batch[None, :] * stride_yb + rows[:, None]
        mask = row_ok[:, None] & batch_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(out, acc, mask=mask)


if triton is not None:

    @triton.jit
    def _gemv24_kernel(x_ptr, v_ptr, m_ptr, bias_ptr, y_ptr, N, K, stride_vn, stride_mn,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, HAS_BIAS: tl.constexpr,
                       META_DIRECT: tl.constexpr):
        """y[n] = Σ_j values[n, j] · x[4·(j // 2) + idx(n, j)] for a single row x (the batch-1 decode case).

        Values are streamed as contiguous [BLOCK_N, BLOCK_V] tiles. Value j's 2-bit index sits in byte j // 4
        of its row's index bytes: either the tile's [BLOCK_N, BLOCK_V/4] bytes are loaded once and widened
        to one per value with two interleaves (META_DIRECT = 0), or each value loads its byte itself
        (META_DIRECT = 1: four neighbours read the same byte from cache, no register shuffles). The x entry
        of each value is gathered from cache. Plain FMAs into one fp32 partial sum per value slot, reduced
        across the tile once at the end (a reduction per step was slower); no padding to 16 rows.
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        half = K // 2
        for j0 in range(0, half, BLOCK_V):
            j = j0 + tl.arange(0, BLOCK_V)
            ok = row_ok[:, None] & (j < half)[None, :]
            v = tl.load(v_ptr + rows[:, None] * stride_vn + j[None, :], mask=ok, other=0.0)
            if META_DIRECT:
                byte = tl.load(m_ptr + rows[:, None] * stride_mn + (j // 4)[None, :], mask=ok, other=0).to(tl.int32)
            else:
                b = j0 // 4 + tl.arange(0, BLOCK_V // 4)
                byte = tl.load(m_ptr + rows[:, None] * stride_mn + b[None, :],
                               mask=row_ok[:, None] & (b * 4 < half)[None, :], other=0).to(tl.int32)
                byte = tl.interleave(byte, byte)
                byte = tl.interleave(byte, byte)  # [BLOCK_N, BLOCK_V]: the byte holding value j's index
            idx = (byte >> ((j % 4) * 2)[None, :]) & 3
            x = tl.load(x_ptr + (j // 2 * 4)[None, :] + idx, mask=ok, other=0.0).to(tl.float32)
            acc += v.to(tl.float32) * x
        out = tl.sum(acc, axis=1)
        if HAS_BIAS:
            out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, out.to(y_ptr.dtype.element_ty), mask=row_ok)


def launch_device(x: torch.Tensor):
    """Context in which a Triton kernel on `x` launches on x's GPU (Triton launches on the current device);
    a no-op elsewhere (the interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def gemv24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
           config: dict | None = None) -> torch.Tensor:
    """x [1, in] times the packed 2:4 weight transposed: [1, out]."""
    if triton is None:
        raise RuntimeError("the 2:4 decode kernel needs Triton")
    x = x.contiguous()
    N, K = values.shape[0], x.shape[1]
    cfg = config or TUNED.get((N, K, "gemv")) or GEMV_DEFAULT
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    with launch_device(x):
        _gemv24_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
            x, values, meta, bias if bias is not None else values, y, N, K, values.stride(0), meta.stride(0),
            BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], HAS_BIAS=bias is not None,
            META_DIRECT=int(cfg.get("META_DIRECT", 0)), num_warps=cfg["num_warps"],
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
    cfg = config or TUNED.get((N, K, rows)) or TUNED.get((N, K, MAX_ROWS)) or DEFAULT_CONFIG
    split = cfg.get("SPLIT_K", 1)
    # split-K programs add partial sums into an fp32 buffer, which is then cast
    y = torch.zeros(rows, N, dtype=torch.float32, device=x.device) if split > 1 else \
        torch.empty(rows, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), split)
    with launch_device(x):
        _spmm24_kernel[grid](x, values, meta, bias if bias is not None else values, y, N, K,
                             x.stride(0), values.stride(0), meta.stride(0), y.stride(0), rows,
                             BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], SPLIT_K=split,
                             HAS_BIAS=bias is not None, num_warps=cfg["num_warps"],
                             num_stages=cfg.get("num_stages", 3))
    return y.to(x.dtype) if split > 1 else y


def tune(values: torch.Tensor, meta: torch.Tensor, rows: int, configs: list[dict] | None = None,
         kernel: str = "spmm") -> tuple[dict, float]:
    """Time every launch configuration for this weight shape and row count; remember the best.
    Returns (best config, its milliseconds). `kernel` is "spmm" (≤ 16 rows) or "gemv" (1 row)."""
    from .timing import L2_BYTES, time_calls

    # cycle through copies of the weight so that the timings are not served from the L2 cache
    copies = max(1, -(-4 * L2_BYTES // (values.numel() * values.element_size())))
    weights = [(values.clone(), meta.clone()) for _ in range(copies)]
    x = torch.randn(rows, 2 * values.shape[1], dtype=values.dtype, device=values.device)
    fn = gemv24 if kernel == "gemv" else spmm24
    timings = []
    for cfg in configs or (GEMV_CONFIGS if kernel == "gemv" else CONFIGS):
        calls = [lambda v=v, m=m, cfg=cfg: fn(x, v, m, config=cfg) for v, m in weights]
        try:
            timings.append((time_calls(calls, repeats=10), cfg))
        except Exception:  # a configuration the compiler rejects (e.g. out of shared memory) is skipped
            continue
    ms, best = min(timings, key=lambda t: t[0])
    TUNED[(values.shape[0], 2 * values.shape[1], "gemv" if kernel == "gemv" else rows)] = best
    return best, ms
