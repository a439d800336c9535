"""2048-token products of the 8B shapes: CUTLASS's Hopper 2:4 FP8 kernel (bench/kernels/cutlass_sm90_24, KIND=fp8)
in every configuration × scheduler mode, against dense bf16 (cuBLAS), dense FP8 (`torch._scaled_mm`, row-wise scales,
with and without fast accumulation) and torch's cuSPARSELt FP8 sparse product, all in one process on the same
weights. Products only: the inputs are already FP8 (per token) and the scales are applied in each kernel's epilogue
(cuSPARSELt's: one bf16 multiply after it, as the layer does). Timed in CUDA graphs over weight copies that exceed
the L2 cache four times; every FP8 result checked against the exact fp32 product of the same FP8 operands.

    CUTLASS_DIR=... KIND=fp8 bench/kernels/cutlass_sm90_24/build.sh libsm90_24_fp8.so
    PYTHONPATH=src python bench/kernels/cutlass_fp8_prefill.py libsm90_24_fp8.so [--tokens 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment
from environment import environment  # bench/environment.py
from cutlass_sparse_prefill import PERSISTENT_MODES  # beside this file: every FP8 configuration is persistent
from prunekit.eval.speed import random_24_linears
from prunekit.quantize import per_token
from prunekit.quantize.fp8 import quantize_fp8
from prunekit.sparse import cutlass_lib
from prunekit.sparse.packing import pack_24
from prunekit.sparse.timing import time_calls

SHAPES = "4096x4096,1024x4096,14336x4096,4096x14336"  # q/o, k/v, gate/up, down of Llama-3.1-8B (out x in)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def cell(lib: cutlass_lib.Library, out: int, inp: int, tokens: int) -> dict:
    dense = random_24_linears(out, inp, torch.bfloat16)
    fp8 = [quantize_fp8(layer.weight.data) for layer in dense]  # (W8 [out, in], sw [out]) per copy
    cut = [cutlass_lib.Weight24FP8(lib, w8) for w8, _ in fp8]
    cslt = [torch._cslt_compress(w8) for w8, _ in fp8]
    x = torch.randn(tokens, inp, dtype=torch.bfloat16, device="cuda")
    x8, sx = per_token.quantize(x)
    w8, sw = fp8[0]
    ref = (x8.float() @ w8.float().t()) * sx * sw
    row = {"out": out, "in": inp, "tokens": tokens, "errors": {},
           # whether CUTLASS's compressed values are prunekit's packed ones byte for byte (then a layer holds them once)
           "cutlass_values_shared": cutlass_lib.Weight24FP8(lib, w8).share_values(pack_24(w8)[0])}

    def timed(name, calls, check=None):
        try:
            if check is not None:
                row["errors"][name] = rel_err(check(), ref)
            row[name] = time_calls(calls)
        except RuntimeError as err:
            row[name] = str(err).splitlines()[0][:120]

    with torch.no_grad():
        timed("dense_bf16_ms", [lambda l=l: F.linear(x, l.weight) for l in dense])
        for fast in (False, True):
            timed(f"dense_fp8{'_fast' if fast else ''}_ms",
                  [lambda w=w, s=s: torch._scaled_mm(x8, w.t(), scale_a=sx, scale_b=s.unsqueeze(0),
                                                      out_dtype=torch.bfloat16, use_fast_accum=fast) for w, s in fp8],
                  lambda: torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw.unsqueeze(0), out_dtype=torch.bfloat16,
                                           use_fast_accum=fast))
        timed("cslt_fp8_ms", [lambda c=c, s=s: torch._cslt_sparse_mm(c, x8.t(), out_dtype=torch.bfloat16).t() * sx * s
                              for c, (_, s) in zip(cslt, fp8)],
              lambda: torch._cslt_sparse_mm(cslt[0], x8.t(), out_dtype=torch.bfloat16).t() * sx * sw)
        cutlass = row["cutlass"] = {}
        for config in lib.configs:
            for name, mode in PERSISTENT_MODES.items():
                key = f"{config}/{name}"
                try:
                    err = rel_err(cut[0].mm(x8, sx, sw, config, mode), ref)
                    ms = time_calls([lambda c=c, s=s: c.mm(x8, sx, s, config, mode) for c, (_, s) in zip(cut, fp8)])
                except (RuntimeError, cutlass_lib.CutlassError) as e:
                    cutlass[key] = str(e)[:80]
                    continue
                cutlass[key] = {"ms": ms, "rel_err": err}
    ok = {k: v for k, v in cutlass.items() if isinstance(v, dict)}
    if ok:
        best = row["cutlass_best"] = min(ok, key=lambda k: ok[k]["ms"])
        row["cutlass_ms"] = ok[best]["ms"]
        row["cutlass_max_rel_err"] = max(v["rel_err"] for v in ok.values())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("--tokens", default="2048")
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--json")
    args = ap.parse_args()
    lib = cutlass_lib.Library(args.library)
    rows = []
    for shape in args.shapes.split(","):
        out, inp = (int(v) for v in shape.split("x"))
        for tokens in (int(t) for t in args.tokens.split(",")):
            row = cell(lib, out, inp, tokens)
            rows.append(row)
            d = row["dense_bf16_ms"]
            ratio = lambda key: f"{row[key]:.4f} ms ({d / row[key]:.2f}x)" if isinstance(row.get(key), float) else row.get(key)
            print(f"{out}x{inp} tokens {tokens}: dense bf16 {d:.4f} ms; dense fp8 {ratio('dense_fp8_ms')}, fast "
                  f"{ratio('dense_fp8_fast_ms')}; cslt fp8 {ratio('cslt_fp8_ms')}; CUTLASS {ratio('cutlass_ms')} "
                  f"[{row.get('cutlass_best')}], max rel. error {row.get('cutlass_max_rel_err')}; errors {row['errors']}",
                  flush=True)
            if args.json:  # after every row, so that a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps({"environment": environment("cuda", "bfloat16"), "rows": rows},
                                                      indent=1))


if __name__ == "__main__":
    main()
