"""Dense against 2:4 per linear shape of a published model at decode's row counts (batch sizes), with every 2:4
candidate's time: what the layer chooses for each (shape, rows) and what each kernel took (prunekit.eval.speed's
compare_linear: CUDA graphs, cycling through weight copies larger than the L2 cache, contiguous outputs as q/k/v and
≤ 16 rows get them; the layer's own choice times each candidate with the L2 flushed).

    PYTHONPATH=src python bench/speed/decode_rows.py --shape 8b --rows 16 --dtype bfloat16 --out rows.json
    PYTHONPATH=src python bench/speed/decode_rows.py --shape 8b --rows 2048 --fp8 --out prefill.json  # with FP8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from environment import environment  # noqa: E402  (bench/environment.py)
from random_models import SHAPES  # noqa: E402

from prunekit.eval.speed import compare_linear  # noqa: E402
from prunekit.sparse import triton_decode  # noqa: E402


def linear_shapes(shape: str) -> list[tuple[int, int]]:
    """(out, in) of the decoder linears of a SHAPES entry: q/o, k/v, gate/up, down."""
    s = SHAPES[shape]
    d, kv = s["hidden"], s["kv_heads"] * s["hidden"] // s["heads"]
    return [(d, d), (kv, d), (s["intermediate"], d), (d, s["intermediate"])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="8b")
    p.add_argument("--rows", default="16", help="token rows per product, comma-separated")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--fp8", action="store_true", help="also dense FP8 (torch._scaled_mm) and 2:4 + FP8 per shape")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the 2:4 kernels)")
    dtype = getattr(torch, args.dtype)
    result = {"shape": args.shape, "environment": environment("cuda", args.dtype), "rows": []}
    for out, inp in linear_shapes(args.shape):
        for rows in map(int, args.rows.split(",")):
            t0 = time.time()
            row = compare_linear(out, inp, rows, dtype, fp8=args.fp8)
            row["tuned"] = {str(k): v for k, v in triton_decode.TUNED.items() if k[:2] == (out, inp)}
            result["rows"].append(row)
            Path(args.out).write_text(json.dumps(result, indent=2))
            path = next(iter(row["kernel_paths"].values()))
            fp8 = (f", dense FP8 {row['dense_fp8_ms']:.4f} ms, 2:4 + FP8 {row['sparse_fp8_ms']:.4f} ms"
                   if args.fp8 else "")
            print(f"{out}x{inp} rows {rows}: dense {row['dense_ms']:.4f} ms, 2:4 {row['sparse_ms']:.4f} ms "
                  f"({row['speedup']:.2f}x, rel err {row['rel_err']:.1e}{fp8}; {time.time() - t0:.0f} s) | {path[0]}: "
                  f"{path[1][-300:]}", flush=True)


if __name__ == "__main__":
    main()
