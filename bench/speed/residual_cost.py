"""Inference cost of RotPruner's residual rotations (issue 24): the same 2:4 model at a published shape, every decoder
linear on the 2:4 kernels, timed plain and with the explicit products of `--residual-rotations` (rotation/residual.py:
x_b = n(h) A_g before each rotated block, o_b A_gᵀ after its writer), prefill and decode as prunekit.eval.speed
times them (CUDA graphs, static KV cache; with --compile through torch.compile).

The A_g are random orthonormal matrices in the model's dtype: the time of a product does not depend on its values,
nor on how many layers share one A_g (--share-every changes the parameters, not the work: 2 d² multiply-adds a token
per rotated block). Each round builds a fresh model per cell, so every cell gets the same kernels and memory state;
ratios are against the plain 2:4 model of the same round.

    PYTHONPATH=src python bench/speed/residual_cost.py --shape 8b --cells none,attn,both --rounds 2 --out cost.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from e2e_scale import pruned_24_model  # noqa: E402  (bench/speed/e2e_scale.py)
from environment import environment  # noqa: E402  (bench/environment.py)
from random_models import SHAPES  # noqa: E402

from prunekit.eval.speed import measure_variant  # noqa: E402
from prunekit.models.adapters import attention_inputs  # noqa: E402
from prunekit.rotation import residual  # noqa: E402
from prunekit.rotation.stiefel import random_rotation  # noqa: E402
from prunekit.sparse.linear import sparsify  # noqa: E402


def with_rotations(model, choice: str, share_every: int, seed: int = 0):
    """`model` given the products of `--residual-rotations choice` (random A_g), before its linears are converted."""
    kinds = residual.kinds_of(choice)
    if kinds:
        names = residual.groups(residual.blocks(model, kinds, share_every))
        width = model.config.hidden_size
        residual.install(model, {g: random_rotation(width, seed=seed + i) for i, g in enumerate(names)}, kinds,
                         share_every)
    return model


def cell(shape: str, layers: int | None, choice: str, share_every: int, batch: int, prompt_len: int, gen_len: int,
         compile: bool, device: str) -> dict:
    """One fresh 2:4 model with `choice`'s products, its linears converted, timed."""
    model = with_rotations(pruned_24_model(shape, layers, torch.bfloat16, device), choice, share_every)
    converted = sparsify(model, None, attention_inputs(model)) if device == "cuda" else 0
    with torch.no_grad():  # one eager call first: the writers' product hooks are registered on the first forward
        model(input_ids=torch.zeros(batch, 8, dtype=torch.long, device=device), use_cache=False)
    out = measure_variant(model, batch, prompt_len, gen_len, compile) | {"layers_converted": converted}
    rotated = residual.has_residual_rotations(model)
    out["rotation_groups"] = len(list(model.residual_rotations.buffers())) if rotated else 0
    del model
    gc.collect()  # the model sits in reference cycles (checked: even without rotations), so only the collector frees it
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="8b")
    p.add_argument("--layers", type=int, help="decoder layers (default: the shape's own)")
    p.add_argument("--cells", default="none,attn,both", help="--residual-rotations choices, comma-separated")
    p.add_argument("--share-every", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=2048)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="through torch.compile (prunekit.eval.compiled)")
    p.add_argument("--device", default="cuda", help="cuda (cpu: a smoke test of the script, dense products only)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    choices = args.cells.split(",")
    bad = [c for c in choices if c not in residual.CHOICES]
    if bad or "none" not in choices:
        p.error(f"--cells takes {', '.join(residual.CHOICES)} and must include none (the baseline); got {args.cells}")
    result = {"shape": args.shape, "layers": args.layers or SHAPES[args.shape]["layers"], "share_every": args.share_every,
              "batch": args.batch, "prompt_len": args.prompt_len, "gen_len": args.gen_len, "compiled": args.compile,
              "environment": environment(args.device, "bfloat16"), "rounds": []}
    t0 = time.time()
    for k in range(args.rounds):
        row = {c: cell(args.shape, args.layers, c, args.share_every, args.batch, args.prompt_len, args.gen_len,
                       args.compile, args.device) for c in choices}
        result["rounds"].append(row)
        result["cost"] = {f"{c}/{phase}": statistics.median(r[c][f"{phase}_ms"] / r["none"][f"{phase}_ms"]
                                                            for r in result["rounds"])
                          for c in choices if c != "none" for phase in ("prefill", "decode")}
        Path(args.out).write_text(json.dumps(result, indent=2))  # a run cut short keeps what it measured
        print(f"round {k + 1} ({time.time() - t0:.0f} s): "
              + ", ".join(f"{c} {r['prefill_ms']:.2f}/{r['decode_ms']:.3f} ms" for c, r in row.items())
              + " | time vs none: " + ", ".join(f"{name} {v:.3f}x" for name, v in result["cost"].items()), flush=True)


if __name__ == "__main__":
    main()
