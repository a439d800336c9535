"""Prefill speed of a newer cuSPARSELt (PRUNEKIT_CUSPARSELT) in every operand layout of y = x Wᵀ, every
algorithm id, timed in CUDA graphs over weight copies that exceed L2; each result checked against dense.

Layouts: the 2:4 weight as the sparse A of D = W·xᵀ (W stored row- or column-major, xᵀ column-major = x
as given or row-major = a transposed copy, D column-major = y or row-major = yᵀ), or as the sparse B of
D = x·Wᵀ (x as A row- or column-major, Wᵀ column-major = W as given or row-major, D row- or column-major).
prunekit's layer uses W.Arow.Bcol.Ccol. Copies that a layout needs (xᵀ, Wᵀ) are made once, outside the
timing, so this measures the kernels only.

    PRUNEKIT_CUSPARSELT=/path/to/libcusparseLt.so.0 PYTHONPATH=src python bench/kernels/cusparselt_layouts.py \
        [--tokens 2048] [--shapes 11008x4096,4096x11008] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # bench/environment.py
from prunekit.eval.speed import random_24_linears
from prunekit.sparse import cusparselt_lib as cl
from prunekit.sparse.timing import time_calls

ROW, COL = cl._ORDER_ROW, cl._ORDER_COL


class Probe:
    def __init__(self, lib: cl.Library):
        self.lib, self.h = lib, lib.handle(torch.device("cuda"))

    def dense(self, rows: int, cols: int, order: int) -> cl._Opaque:
        return cl.matrix(self.lib, self.h, rows, cols, order, torch.float16)

    def structured(self, rows: int, cols: int, order: int) -> cl._Opaque:
        return cl.matrix(self.lib, self.h, rows, cols, order, torch.float16, structured=True)

    def compress(self, desc: cl._Opaque, sparse_is_a: bool, t: torch.Tensor) -> torch.Tensor:
        size, scratch_size = ctypes.c_size_t(), ctypes.c_size_t()
        self.lib.call("cusparseLtSpMMACompressedSize2", self.h, desc.ptr, ctypes.byref(size), ctypes.byref(scratch_size))
        out = torch.empty(size.value, dtype=torch.uint8, device=t.device)
        scratch = torch.empty(max(scratch_size.value, 1), dtype=torch.uint8, device=t.device)
        self.lib.call("cusparseLtSpMMACompress2", self.h, desc.ptr, int(sparse_is_a), cl._OP_N,
                      ctypes.c_void_p(t.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                      ctypes.c_void_p(scratch.data_ptr()), cl._stream(t.device))
        torch.cuda.synchronize()
        return out

    def algorithms(self, a, b, c) -> tuple[cl._Opaque, int]:
        desc, sel, count = cl._Opaque(), cl._Opaque(), ctypes.c_int()
        self.lib.call("cusparseLtMatmulDescriptorInit", self.h, desc.ptr, cl._OP_N, cl._OP_N, a.ptr, b.ptr, c.ptr,
                      c.ptr, cl._COMPUTE_32F)
        self.lib.call("cusparseLtMatmulAlgSelectionInit", self.h, sel.ptr, desc.ptr, 0)
        self.lib.call("cusparseLtMatmulAlgGetAttribute", self.h, sel.ptr, cl._ALG_CONFIG_MAX_ID, ctypes.byref(count),
                      ctypes.c_size_t(4))
        return desc, count.value

    def matmul(self, desc: cl._Opaque, alg: int, first: bool, out: torch.Tensor):
        """A callable (sparse operand, dense operand) → writes `out` with algorithm `alg`."""
        sel, plan, size = cl._Opaque(), cl._Opaque(), ctypes.c_size_t()
        self.lib.call("cusparseLtMatmulAlgSelectionInit", self.h, sel.ptr, desc.ptr, 0)
        value = ctypes.c_int(alg)
        self.lib.call("cusparseLtMatmulAlgSetAttribute", self.h, sel.ptr, cl._ALG_CONFIG_ID, ctypes.byref(value),
                      ctypes.c_size_t(4))
        self.lib.call("cusparseLtMatmulPlanInit", self.h, plan.ptr, desc.ptr, sel.ptr)
        self.lib.call("cusparseLtMatmulGetWorkspace", self.h, plan.ptr, ctypes.byref(size))
        workspace = torch.empty(max(size.value, 1), dtype=torch.uint8, device=out.device)
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

        def call(sparse: torch.Tensor, dense: torch.Tensor, keep=sel):  # keep: the selection lives as long as the plan
            a, b = (sparse, dense) if first else (dense, sparse)
            streams = (ctypes.c_void_p * 1)(cl._stream(out.device))
            self.lib.call("cusparseLtMatmul", self.h, plan.ptr, ctypes.byref(alpha), ctypes.c_void_p(a.data_ptr()),
                          ctypes.c_void_p(b.data_ptr()), ctypes.byref(beta), ctypes.c_void_p(out.data_ptr()),
                          ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(workspace.data_ptr()), streams, 1)
        return call


def layouts():
    """(name, weight is A, order of the first operand, of the second, of D)."""
    name = {ROW: "row", COL: "col"}
    for a, b, c in product((ROW, COL), (COL, ROW), (COL, ROW)):
        yield f"W.A{name[a]}.B{name[b]}.C{name[c]}", True, a, b, c
    for b, a, c in product((COL, ROW), (ROW, COL), (ROW, COL)):
        yield f"X.A{name[a]}.W{name[b]}.C{name[c]}", False, a, b, c


def cell(probe: Probe, m: int, k: int, n: int, dense) -> dict:
    x = torch.randn(n, k, dtype=torch.float16, device="cuda")
    xt = x.t().contiguous()
    with torch.no_grad():
        ref = F.linear(x, dense[0].weight).float()
        dense_ms = time_calls([lambda l=l: F.linear(x, l.weight) for l in dense])
    row = {"out": m, "in": k, "tokens": n, "dense_ms": dense_ms, "sparse": {}, "failed": {}}
    for name, weight_first, o1, o2, oc in layouts():
        try:
            if weight_first:  # D [m, n] = W [m, k] · xᵀ [k, n]
                a = probe.structured(m, k, o1)
                weights = [l.weight.data if o1 == ROW else l.weight.data.t().contiguous() for l in dense]
                b, operand = probe.dense(k, n, o2), (x if o2 == COL else xt)
                c, out_shape = probe.dense(m, n, oc), ((n, m) if oc == COL else (m, n))
                compressed = [probe.compress(a, True, w) for w in weights]
            else:  # D [n, m] = x [n, k] · Wᵀ [k, m]
                b = probe.structured(k, m, o2)
                weights = [l.weight.data if o2 == COL else l.weight.data.t().contiguous() for l in dense]
                a, operand = probe.dense(n, k, o1), (x if o1 == ROW else xt)
                c, out_shape = probe.dense(n, m, oc), ((n, m) if oc == ROW else (m, n))
                compressed = [probe.compress(b, False, w) for w in weights]
            desc, count = probe.algorithms(a, b, c)
        except cl.CusparseLtError as e:
            row["failed"][name] = str(e)[:80]
            continue
        out = torch.empty(out_shape, dtype=torch.float16, device="cuda")
        for alg in range(count):
            try:
                call = probe.matmul(desc, alg, weight_first, out)
                call(compressed[0], operand)
                torch.cuda.synchronize()
            except cl.CusparseLtError as e:
                row["failed"][f"{name}/{alg}"] = str(e)[:80]
                continue
            y = out if out_shape == (n, m) else out.t()
            err = float((y.float() - ref).norm() / ref.norm())
            ms = time_calls([lambda w=w: call(w, operand) for w in compressed], repeats=10)
            row["sparse"][f"{name}/{alg}"] = {"ms": ms, "speedup": dense_ms / ms, "rel_err": err}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="2048")
    ap.add_argument("--shapes", default="11008x4096,4096x11008")
    ap.add_argument("--json")
    args = ap.parse_args()
    lib = cl.load()
    if lib is None:
        raise SystemExit("no usable cuSPARSELt >= 0.8.1: set PRUNEKIT_CUSPARSELT to its libcusparseLt.so.0")
    print(f"cuSPARSELt {lib.version} from {lib.path}", flush=True)
    probe, rows = Probe(lib), []
    for shape in args.shapes.split(","):
        m, k = (int(v) for v in shape.split("x"))
        dense = random_24_linears(m, k)
        for n in (int(t) for t in args.tokens.split(",")):
            row = cell(probe, m, k, n, dense)
            best: dict[str, float] = {}
            for key, v in row["sparse"].items():
                best[key.split("/")[0]] = max(best.get(key.split("/")[0], 0.0), v["speedup"])
            err = max(v["rel_err"] for v in row["sparse"].values())
            print(f"{m}x{k} tokens {n}: dense {row['dense_ms']:.4f} ms; best per layout "
                  + ", ".join(f"{name} {x:.3f}x" for name, x in best.items())
                  + f"; max rel. error {err:.1e}; {len(row['sparse'])} settings, {len(row['failed'])} refused",
                  flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment("cuda", "float16"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
