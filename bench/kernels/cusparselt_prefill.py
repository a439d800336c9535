"""Prefill speed of 2:4 products against dense: torch's built-in cuSPARSELt (`torch._cslt_sparse_mm`, its
searched algorithm and ids 0–3) against a newer libcusparseLt.so.0 called directly
(prunekit.sparse.cusparselt_lib), every algorithm id and both output orders, all timed in CUDA graphs.

    PRUNEKIT_CUSPARSELT=/path/to/libcusparseLt.so.0 PYTHONPATH=src python bench/kernels/cusparselt_prefill.py \
        [--tokens 2048,8192] [--split-k] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # bench/environment.py
from prunekit.eval.speed import random_24_linears
from prunekit.sparse import cusparselt_lib
from prunekit.sparse.timing import time_calls

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]


def cell(lib, out: int, inp: int, tokens: int) -> dict:
    dense = random_24_linears(out, inp)
    x = torch.randn(tokens, inp, dtype=torch.float16, device="cuda")
    row = {"out": out, "in": inp, "tokens": tokens}
    with torch.no_grad():
        ref = F.linear(x, dense[0].weight).float()
        row["dense_ms"] = time_calls([lambda l=l: F.linear(x, l.weight) for l in dense])
        comp = [torch._cslt_compress(l.weight.data) for l in dense]
        searched = torch._cslt_sparse_mm_search(comp[0], x.t())
        builtin = {}
        for alg in dict.fromkeys([searched, 0, 1, 2, 3]):
            try:
                builtin[alg] = time_calls([lambda c=c: torch._cslt_sparse_mm(c, x.t(), alg_id=alg) for c in comp])
            except RuntimeError:
                pass
        row["builtin_ms"] = min(builtin.values())
        row["builtin_algs"] = builtin
        if lib is None:
            return row
        weights = [cusparselt_lib.Weight24(lib, l.weight.data) for l in dense]
        timings = {}
        for out_rows in (True, False):
            found = weights[0].searched(x, out_rows)
            max_alg = weights[0].plan(tokens, out_rows, found).max_alg
            for alg in range(max_alg):
                try:
                    y = weights[0].mm(x, out_rows, alg)
                    err = float((y.float() - ref).norm() / ref.norm())
                    ms = time_calls([lambda w=w: w.mm(x, out_rows, alg) for w in weights])
                except (RuntimeError, ValueError) as e:
                    timings[f"{'rows' if out_rows else 'cols'}/{alg}"] = str(e)[:80]
                    continue
                timings[f"{'rows' if out_rows else 'cols'}/{alg}"] = {"ms": ms, "rel_err": err, "searched": alg == found}
        ok = {k: v for k, v in timings.items() if isinstance(v, dict)}
        best = min(ok, key=lambda k: ok[k]["ms"])
        row.update(lib_ms=ok[best]["ms"], lib_best=best, lib_rel_err=ok[best]["rel_err"], lib_algs=timings)
    return row


SPLIT_K = [(1, 0)] + [(k, mode) for k in (1, 2, 3, 4) for mode in range(1, 7)]


def split_k_cells(lib, algs=(6, 27, 42)) -> list[dict]:
    """Split-K settings (splits, cusparseLtSplitKMode_t: 1 one kernel, 2 two kernels, 3 heuristic,
    4 data-parallel, 5 split-K, 6 stream-K) of the newer library for the two FFN shapes."""
    rows = []
    for out, inp in [(11008, 4096), (4096, 11008)]:
        dense = random_24_linears(out, inp)
        weights = [cusparselt_lib.Weight24(lib, l.weight.data) for l in dense]
        for tokens in (2048, 8192):
            x = torch.randn(tokens, inp, dtype=torch.float16, device="cuda")
            with torch.no_grad():
                ref = F.linear(x, dense[0].weight).float()
                dense_ms = time_calls([lambda l=l: F.linear(x, l.weight) for l in dense])
                found = {}
                for alg in algs:
                    for split in SPLIT_K:
                        key = f"{alg}/{split[0]}/{split[1]}"
                        try:
                            y = weights[0].mm(x, True, alg, split)
                            err = float((y.float() - ref).norm() / ref.norm())
                            if err > 1e-2:
                                found[key] = f"wrong result, rel. err {err:.1e}"
                                continue
                            found[key] = time_calls([lambda w=w: w.mm(x, True, alg, split) for w in weights])
                        except (RuntimeError, ValueError) as e:
                            found[key] = str(e)[:80]
            ok = {k: v for k, v in found.items() if isinstance(v, float)}
            best = min(ok, key=ok.get)
            row = {"out": out, "in": inp, "tokens": tokens, "dense_ms": dense_ms, "best": best,
                   "best_ms": ok[best], "speedup": dense_ms / ok[best], "settings": found}
            rows.append(row)
            top = sorted(ok, key=ok.get)[:5]
            print(json.dumps({k: v for k, v in row.items() if k != "settings"}),
                  [(k, round(dense_ms / ok[k], 3)) for k in top],
                  "failed:", sorted({v for v in found.values() if isinstance(v, str)})[:3], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="2048,8192")
    parser.add_argument("--split-k", action="store_true", help="only probe the newer library's split-K settings")
    parser.add_argument("--json")
    args = parser.parse_args()
    lib = cusparselt_lib.load()
    if args.split_k:
        rows = split_k_cells(lib)
        if args.json:
            Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "library_version": lib.version,
                                                   "environment": environment("cuda", "float16"), "split_k": rows},
                                                  indent=2))
        return
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "builtin_cusparselt": torch.backends.cusparselt.version(),
            "library": lib.path if lib else None, "library_version": lib.version if lib else None,
            "environment": environment("cuda", "float16"), "rows": []}
    print(json.dumps({k: v for k, v in info.items() if k != "rows"}), flush=True)
    for out, inp in SHAPES:
        for tokens in map(int, args.tokens.split(",")):
            row = cell(lib, out, inp, tokens)
            info["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "lib_algs"}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    print("\n| weight (out×in) | tokens | dense ms | built-in 2:4 ms | speed-up | newer library 2:4 ms (order/alg) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in info["rows"]:
        lib_cols = (f"{r['lib_ms']:.4f} ({r['lib_best']}) | {r['dense_ms'] / r['lib_ms']:.2f}×" if "lib_ms" in r
                    else "— | —")
        print(f"| {r['out']}×{r['in']} | {r['tokens']} | {r['dense_ms']:.4f} | {r['builtin_ms']:.4f} | "
              f"{r['dense_ms'] / r['builtin_ms']:.2f}× | {lib_cols} |")


if __name__ == "__main__":
    main()
