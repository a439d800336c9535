"""Every launch of the ≤ 16-row 2:4 kernel (`triton_decode.spmm24`) on the decoder shapes of a published model, against
the dense product (cuBLAS through F.linear) at the same row count: which tile, split-K, warps and pipeline depth keep a
16-row product fed, and how far the best is from dense. Each launch is timed in a CUDA graph over weight copies that
exceed the L2 cache four times (prunekit.sparse.timing), and checked against dense once.

`--compare FILE` times another version of triton_decode.py side by side on its own CONFIGS (e.g. the previous commit's,
`git show REV:src/prunekit/sparse/triton_decode.py > old.py`, loaded as a module of prunekit.sparse), in the same
process and on the same weights.

    PYTHONPATH=src python bench/kernels/spmm24_launches.py --shape 8b --rows 16 --json launches.json [--compare old.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "speed")]
from environment import environment  # noqa: E402  (bench/environment.py)
from decode_rows import linear_shapes  # noqa: E402  (bench/speed/decode_rows.py)
from random_models import SHAPES  # noqa: E402

from prunekit.eval.speed import random_24_linears  # noqa: E402
from prunekit.sparse import triton_decode  # noqa: E402
from prunekit.sparse.packing import pack_24  # noqa: E402
from prunekit.sparse.timing import time_calls  # noqa: E402

#: the grid searched here (wider than triton_decode.CONFIGS, which a layer tunes over on first use)
GRID = [{"BLOCK_N": n, "BLOCK_K": k, "SPLIT_K": s, "num_warps": w, "num_stages": st}
        for n, k, s, (w, st) in product((32, 64, 128), (128, 256), (1, 2, 4, 8, 16), ((4, 3), (4, 4), (8, 3), (8, 4)))]


def load_module(path: str):
    """Another triton_decode.py as a module of prunekit.sparse (its relative imports resolve there)."""
    spec = importlib.util.spec_from_file_location("prunekit.sparse._compared_triton_decode", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "prunekit.sparse"
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sweep(module, configs: list[dict], packed: list, x: torch.Tensor, ref: torch.Tensor) -> list[dict]:
    """[{config, ms, rel_err}] of `module.spmm24` per launch configuration, fastest first; failures recorded."""
    rows = []
    for cfg in configs:
        try:
            y = module.spmm24(x, *packed[0], config=cfg).float()
            err = ((y - ref).norm() / ref.norm()).item()
            ms = time_calls([lambda v=v, m=m: module.spmm24(x, v, m, config=cfg) for v, m in packed])
            rows.append({"config": cfg, "ms": ms, "rel_err": err})
        except Exception as e:  # noqa: BLE001  (a launch the compiler rejects: recorded, not fatal)
            rows.append({"config": cfg, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    # fastest first among the launches whose result is the dense product's (tune's rule), then the others
    return sorted(rows, key=lambda r: (not r.get("rel_err", 1.0) < 1e-2, r.get("ms", float("inf"))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="8b")
    p.add_argument("--rows", default="16", help="token rows, comma-separated (each ≤ 16)")
    p.add_argument("--compare", help="another triton_decode.py, timed on its own CONFIGS")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    other = load_module(args.compare) if args.compare else None
    shapes = linear_shapes(args.shape)
    result = {"shape": args.shape, "environment": environment("cuda", "bfloat16"), "cells": []}
    for (out, inp), rows in product(shapes, map(int, args.rows.split(","))):
        dense = random_24_linears(out, inp, torch.bfloat16)
        packed = [pack_24(layer.weight.data) for layer in dense]
        x = torch.randn(rows, inp, dtype=torch.bfloat16, device="cuda")
        with torch.no_grad():
            ref = dense[0](x).float()
            dense_ms = time_calls([lambda w=layer.weight: F.linear(x, w) for layer in dense])
        cell = {"out": out, "in": inp, "rows": rows, "dense_ms": dense_ms,
                "launches": sweep(triton_decode, GRID, packed, x, ref)}
        if other is not None:
            cell["compared"] = sweep(other, other.CONFIGS, packed, x, ref)
        result["cells"].append(cell)
        Path(args.json).write_text(json.dumps(result, indent=2))
        best = cell["launches"][0]
        line = f"{out}x{inp} rows {rows}: dense {dense_ms:.4f} ms, best {best.get('ms', float('nan')):.4f} ms " \
               f"({dense_ms / best.get('ms', float('inf')):.2f}x dense) {best['config']}"
        if other is not None:
            line += f" | compared best {cell['compared'][0].get('ms', float('nan')):.4f} ms {cell['compared'][0]['config']}"
        print(line, flush=True)
        for r in cell["launches"][1:8]:
            print(f"    {r.get('ms', float('nan')):.4f} ms {r['config']}", flush=True)
        del dense, packed
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
