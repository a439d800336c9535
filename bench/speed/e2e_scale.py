"""End-to-end generation of a 2:4 model at a published shape, every linear sparse: `prunekit.eval.speed.bench` on a
random-weight Llama (Llama-3.1-8B's shape by default; bench/speed/random_models.py) whose decoder linears are pruned
to 2:4 by magnitude, per batch size, for --rounds rounds (a fresh model each time: bench converts its layers).

Each bench call measures, as `prunekit bench --convert all --fp8` does: dense bf16, every 2:4 linear on the 2:4
kernels (q/k/v/o and the MLP), the same weights in dense FP8 (torch._scaled_mm) and in 2:4 + FP8 (cuSPARSELt FP8
and the Triton decode kernel, whichever timed faster per row count); prefill over [batch, --prompt-len] tokens and
decode of --gen-len tokens against a static KV cache, both replayed from CUDA graphs; peak and weight memory; and
each layer's kernel path with its reason. The JSON keeps every round and the per-round speed-ups' median and range.

    PYTHONPATH=src python bench/speed/e2e_scale.py --shape 8b --batches 1,16 --rounds 3 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from environment import environment  # noqa: E402  (bench/environment.py)
from random_models import SHAPES, random_llama  # noqa: E402

from prunekit.eval.speed import bench  # noqa: E402
from prunekit.models.adapters import get_adapter  # noqa: E402
from prunekit.patterns import keep_n_of_m  # noqa: E402

VARIANTS = ("sparse", "dense_fp8", "sparse_fp8")


def pruned_24_model(shape: str, layers: int | None, dtype, device: str):
    """A random-weight model of `shape` on `device` with every decoder linear pruned to 2:4 by magnitude."""
    widths = dict(SHAPES[shape]) | ({"layers": layers} if layers else {})
    model = random_llama(**widths, dtype=dtype, device=device)
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer in adapter.layers():
            for _, op in adapter.linears(layer):
                op.weight.masked_fill_(~keep_n_of_m(op.weight.abs().float(), 2, 4), 0.0)
    return model


def speedups(rounds: list[dict]) -> dict:
    """Per variant and phase: the median and range over rounds of its tokens/s over dense bf16's in the same round."""
    out = {}
    for variant in VARIANTS:
        for phase in ("prefill", "decode"):
            ratios = [r[variant][f"{phase}_tokens_per_s"] / r["dense"][f"{phase}_tokens_per_s"]
                      for r in rounds if variant in r]
            if ratios:
                out[f"{variant}/{phase}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                             "max": max(ratios), "rounds": len(ratios)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="8b")
    p.add_argument("--layers", type=int, help="decoder layers (default: the shape's own)")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt-len", type=int, default=2048)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--no-fp8", action="store_true", help="bf16 variants only")
    p.add_argument("--compile", action="store_true", help="every variant through torch.compile (prunekit.eval.compiled)")
    p.add_argument("--device", default="cuda", help="cuda (cpu: a smoke test of the script, dense only)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    result = {"shape": args.shape, "layers": args.layers or SHAPES[args.shape]["layers"], "compiled": args.compile,
              "prompt_len": args.prompt_len,
              "gen_len": args.gen_len, "environment": environment(args.device, args.dtype),
              "cusparselt": torch.backends.cusparselt.version(),
              "keep_layout": os.environ.get("PRUNEKIT_KEEP_LAYOUT") == "1", "batches": {}}  # eval.compiled's experiment
    t0 = time.time()
    for k in range(args.rounds):
        for batch in map(int, args.batches.split(",")):
            model = pruned_24_model(args.shape, args.layers, dtype, args.device)
            report = bench(model, batch, args.prompt_len, args.gen_len, dtype, convert="all", fp8=not args.no_fp8,
                           compile=args.compile)
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            cell = result["batches"].setdefault(str(batch), {"rounds": []})
            cell["rounds"].append(report)
            cell["speedups"] = speedups(cell["rounds"])
            Path(args.out).write_text(json.dumps(result, indent=2))  # a run cut short keeps what it measured
            print(f"round {k + 1} batch {batch} ({time.time() - t0:.0f} s): "
                  + ", ".join(f"{name} {s['median']:.2f}x" for name, s in cell["speedups"].items()), flush=True)


if __name__ == "__main__":
    main()
