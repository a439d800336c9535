"""Prefill speed of CUTLASS's Hopper 2:4 sparse GEMM (bench/kernels/cutlass_sm90_24) against dense cuBLAS, every
configuration × tile-scheduler mode (max swizzle 1–8 × raster order heuristic / along M / along N, or
stream-K splits 1–4), timed in CUDA graphs over weight copies that exceed L2; each result checked
against the dense product.

    CUTLASS_DIR=... bench/kernels/cutlass_sm90_24/build.sh libsm90_24.so
    PYTHONPATH=src python bench/kernels/cutlass_sparse_prefill.py libsm90_24.so [--configs 0,2,8] \
        [--tokens 2048,8192] [--shapes 11008x4096,4096x11008] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # bench/environment.py
from prunekit.eval.speed import random_24_linears
from prunekit.sparse.cusparselt_lib import _stream
from prunekit.sparse.timing import time_calls

P = ctypes.c_void_p
STREAM_K = {6, 7}  # configurations built with the stream-K scheduler (build.sh)


#: name → `mode` of a persistent-scheduler configuration: 1 split | log2 max swizzle << 8 | raster << 16 (common.cuh)
PERSISTENT_MODES = {f"w{1 << w}/{'hMN'[r]}": 1 | w << 8 | r << 16 for w in range(4) for r in range(3)}


def modes(config: int) -> dict[str, int]:
    """name → `mode` argument of pk24_gemm_<config> (splits | log2 swizzle << 8 | raster << 16)."""
    if config in STREAM_K:
        return {f"splits{s}": s for s in (1, 2, 3, 4)}
    return PERSISTENT_MODES


class Cutlass24:
    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.pk24_compress_workspace.restype = ctypes.c_size_t

    def compress(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A 2:4 weight [m, k] → (kept values [m, k/2], metadata) in CUTLASS's layout, compressed on the GPU."""
        m, k = w.shape
        kc, e_bytes = ctypes.c_longlong(), ctypes.c_longlong()
        self.lib.pk24_sizes(m, k, ctypes.byref(kc), ctypes.byref(e_bytes))
        values = torch.empty(m, kc.value, dtype=w.dtype, device=w.device)
        meta = torch.zeros(e_bytes.value, dtype=torch.uint8, device=w.device)
        size = self.lib.pk24_compress_workspace(m, k)
        scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=w.device)
        status = self.lib.pk24_compress(P(w.data_ptr()), P(values.data_ptr()), P(meta.data_ptr()), m, k,
                                        P(scratch.data_ptr()), ctypes.c_size_t(size), _stream(w.device))
        torch.cuda.synchronize()
        if status:
            raise RuntimeError(f"pk24_compress: status {status}")
        return values, meta

    def product(self, config: int, mode: int, m: int, n: int, k: int, x: torch.Tensor, y: torch.Tensor):
        """A callable (values, meta) → writes y = x Wᵀ with one configuration and scheduler mode."""
        gemm = getattr(self.lib, f"pk24_gemm_{config}")
        sizer = getattr(self.lib, f"pk24_workspace_{config}")
        sizer.restype = ctypes.c_size_t
        workspace = torch.zeros(max(sizer(m, n, k, mode), 1), dtype=torch.uint8, device=x.device)

        def call(values, meta):
            status = gemm(P(values.data_ptr()), P(meta.data_ptr()), P(x.data_ptr()), P(y.data_ptr()), m, n, k,
                          mode, P(workspace.data_ptr()), _stream(x.device))
            if status:
                raise RuntimeError(f"pk24_gemm_{config}: status {status}")
        return call


def cell(lib: Cutlass24, configs: list[int], out: int, inp: int, tokens: int, weights, dense) -> dict:
    x = torch.randn(tokens, inp, dtype=torch.float16, device="cuda")
    y = torch.empty(tokens, out, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        ref = F.linear(x, dense[0].weight).float()
        dense_ms = time_calls([lambda l=l: F.linear(x, l.weight) for l in dense])
    row = {"out": out, "in": inp, "tokens": tokens, "dense_ms": dense_ms, "sparse": {}}
    for config in configs:
        for name, mode in modes(config).items():
            key = f"{config}/{name}"
            try:
                call = lib.product(config, mode, out, tokens, inp, x, y)
                y.zero_()
                call(*weights[0])
                torch.cuda.synchronize()
                err = float((y.float() - ref).norm() / ref.norm())
                ms = time_calls([lambda w=w: call(*w) for w in weights])
            except RuntimeError as e:
                row["sparse"][key] = str(e)[:80]
                continue
            row["sparse"][key] = {"ms": ms, "speedup": dense_ms / ms, "rel_err": err}
    ok = {k: v for k, v in row["sparse"].items() if isinstance(v, dict)}
    row["best"] = max(ok, key=lambda k: ok[k]["speedup"]) if ok else None
    row["max_rel_err"] = max((v["rel_err"] for v in ok.values()), default=None)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("--configs", default="0,1,2,3,4,5,6,7,8,9,10,11,12,13")
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--shapes", default="11008x4096,4096x11008")
    ap.add_argument("--json")
    args = ap.parse_args()
    lib = Cutlass24(args.library)
    configs = [int(c) for c in args.configs.split(",")]
    rows = []
    for shape in args.shapes.split(","):
        out, inp = (int(v) for v in shape.split("x"))
        dense = random_24_linears(out, inp)
        weights = [lib.compress(l.weight.data) for l in dense]
        for tokens in (int(t) for t in args.tokens.split(",")):
            row = cell(lib, configs, out, inp, tokens, weights, dense)
            ok = {k: v for k, v in row["sparse"].items() if isinstance(v, dict)}
            top = sorted(ok, key=lambda k: -ok[k]["speedup"])[:5]
            print(f"{out}x{inp} tokens {tokens}: dense {row['dense_ms']:.4f} ms; best "
                  + ", ".join(f"{k} {ok[k]['ms']:.4f} ms ({ok[k]['speedup']:.2f}x)" for k in top)
                  + f"; max rel. error {row['max_rel_err']:.1e}; failed {len(row['sparse']) - len(ok)}", flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment("cuda", "float16"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
