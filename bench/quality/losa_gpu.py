"""LoSA (issue 5): quality and cost of every variant at the same token budget, on GPU or CPU.

For each pattern, with the same calibration windows, fine-tuning text and token budget:
  base       the base pruner alone (one shot)
  dense-lora one-shot prune + plain LoRA, rank r̄ everywhere, left unmerged (not sparse when merged)
  sparse-lora one-shot prune + mask-aligned LoRA, uniform sparsity, rank r̄ everywhere, merged
  losa       T progressive stages, RMI layer sparsity, error-based ranks, merged
  losa-no-rmi / losa-no-ranks  the ablations (no-rmi is skipped for N:M, where RMI does not apply)
Records perplexity (protocol Q), achieved sparsity and the merge check, time per stage and peak
memory, writes JSON, and prints markdown tables last.

    PYTHONPATH=src python bench/quality/losa_gpu.py --device cuda --out losa_gpu.json

fp32 matrix products run in strict fp32, as through the CLI; --tf32 allows TF32 on CUDA (faster, and not
the same numbers: for Wanda 70% alone an issue reports 979.89 through the strict-fp32 CLI against 832.64 from
this script with TF32). The JSON
records which ("environment" → "precision"), and --resume refuses a file written under the other setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import prunekit
from prunekit import api
from prunekit.methods import config_class
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # bench/environment.py
from protocol import protocol_q  # bench/protocol.py

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "base": None,
    "dense-lora": dict(stages=1, adapter="dense", rmi=False, rank_allocation=False),
    "sparse-lora": dict(stages=1, rmi=False, rank_allocation=False),
    "losa": dict(),
    "losa-no-rmi": dict(rmi=False),
    "losa-no-ranks": dict(rank_allocation=False),
    "losa-local-ranks": dict(rank_error="local"),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--data-dir", default=str(HERE.parents[2] / "shared" / "data"))
    p.add_argument("--train-data", default=None, help="default: <data-dir>/c4/c4.validation_2k.jsonl")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--sparsity", type=float, default=0.7, help="target of the unstructured runs")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--base-pruner", default="wanda")
    p.add_argument("--stages", type=int, default=5)
    p.add_argument("--train-tokens", type=int, default=1_048_576)
    p.add_argument("--train-seqlen", type=int, default=512)
    p.add_argument("--train-batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--feature-windows", type=int, default=16)
    p.add_argument("--rmi-tokens", type=int, default=1024)
    p.add_argument("--eval-segments", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--dense-eval", action="store_true", help="also evaluate the dense model")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 for fp32 matmuls on CUDA (default: strict fp32, as the CLI); recorded in the JSON")
    p.add_argument("--out", default="losa_gpu.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --out and run only the missing variants (runs under a time limit)")
    return p.parse_args()


def make_config(variant: str, pattern: str, args):
    sparsity = args.sparsity if pattern == "unstructured" else 0.5
    if VARIANTS[variant] is None:
        return config_class(args.base_pruner)(sparsity=sparsity, pattern=pattern)
    options = dict(base_pruner=args.base_pruner, stages=args.stages, train_data=args.train_data,
                   train_tokens=args.train_tokens, train_seqlen=args.train_seqlen,
                   train_batch_size=args.train_batch_size, lr=args.lr, feature_windows=args.feature_windows,
                   rmi_tokens=args.rmi_tokens)
    return prunekit.LosaConfig(sparsity=sparsity, pattern=pattern, **{**options, **VARIANTS[variant]})


def peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


def run_variant(variant, pattern, args, calib, sets):
    model, tokenizer = prunekit.load_model(args.model, args.dtype, args.device)
    config = make_config(variant, pattern, args)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(args.device)
    t0 = time.perf_counter()
    result = prunekit.prune(model, config, calib, device=args.device, batch_size=args.batch_size,
                            progress=False, tokenizer=tokenizer)
    seconds = time.perf_counter() - t0
    model.to(args.device)  # the engine leaves pruned layers on the CPU
    ppl, eval_seconds = api.evaluate(model, sets, args.device, 1, None, False)
    details = getattr(result, "details", {})
    row = {"variant": variant, "pattern": pattern, "ppl": ppl["wikitext2"], "achieved_sparsity": result.achieved_sparsity,
           "seconds": seconds, "eval_seconds": eval_seconds, "peak_mb": peak_mb(args.device),
           "mask_check": details.get("mask_check"), "unmerged": variant == "dense-lora",
           "stages": [{k: s[k] for k in ("stage", "sparsity", "seconds_rmi", "seconds_prune", "peak_memory_mb", "ranks", "recon_error")}
                      | {"seconds_train": s["train"]["seconds"], "train_tokens": s["train"]["tokens"],
                         "loss_first": s["train"]["loss_first"], "loss_last": s["train"]["loss_last"],
                         "rate_min": min(s["layer_sparsity"]), "rate_max": max(s["layer_sparsity"])}
                      for s in details.get("stages", [])],
           "train_data": details.get("train_data")}
    print(json.dumps({k: row[k] for k in ("variant", "pattern", "ppl", "achieved_sparsity", "seconds", "peak_mb")}),
          flush=True)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def markdown(rows, dense_ppl, args) -> str:
    out = [f"Quality, {args.base_pruner}, {args.train_tokens} fine-tuning tokens for every variant"
           + (f" (dense {dense_ppl:.2f})" if dense_ppl else ""), "",
           "| pattern | variant | wiki ppl | vs sparse LoRA | vs dense LoRA | achieved sparsity | merged zeros = mask zeros | seconds | peak MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref = {r["variant"]: r["ppl"] for r in rows if r["pattern"] == row["pattern"]}
        check = row["mask_check"]
        ok = "unmerged" if row["unmerged"] else ("—" if check is None else
                                                 str(check["nonzero_outside_mask"] == 0 and check["merged_zeros"] == check["mask_zeros"]))
        vs = [f"{row['ppl'] - ref[k]:+.2f}" if k in ref else "—" for k in ("sparse-lora", "dense-lora")]
        peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] else "—"
        out.append(f"| {row['pattern']} | {row['variant']} | {row['ppl']:.2f} | {vs[0]} | {vs[1]} | "
                   f"{row['achieved_sparsity']:.4f} | {ok} | {row['seconds']:.1f} | {peak} |")
    out += ["", "Time per LoSA stage", "", "| pattern | stage | sparsity | layer rates | ranks (min–max, mean) | RMI s | prune s | train s | loss first → last | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["variant"] != "losa":
            continue
        for s in row["stages"]:
            r = s["ranks"]
            out.append(f"| {row['pattern']} | {s['stage']} | {s['sparsity']:.4f} | {s['rate_min']:.3f}–{s['rate_max']:.3f} | "
                       f"{min(r)}–{max(r)}, {sum(r) / len(r):.1f} | {s['seconds_rmi']:.1f} | {s['seconds_prune']:.1f} | "
                       f"{s['seconds_train']:.1f} | {s['loss_first']:.3f} → {s['loss_last']:.3f} | {s['peak_memory_mb']:.0f} |")
    return "\n".join(out)


def main():
    args = parse_args()
    data = Path(args.data_dir)
    args.train_data = args.train_data or str(data / "c4" / "c4.validation_2k.jsonl")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = args.tf32  # set either way: never inherit a silent default
    env = environment(args.device, args.dtype)
    model, tokenizer = prunekit.load_model(args.model, args.dtype, args.device)
    calib, sets = protocol_q(tokenizer, data, args.nsamples, args.eval_segments)
    previous = json.loads(Path(args.out).read_text()) if args.resume and Path(args.out).is_file() else {}
    before = previous.get("environment", {}).get("precision", previous.get("precision", {})).get("fp32_matmul")
    if before is not None and before != env["precision"]["fp32_matmul"]:
        sys.exit(f"{args.out} was written with fp32 matmuls in {before}, this run uses "
                 f"{env['precision']['fp32_matmul']}: pass the same --tf32 setting or another --out")
    rows = previous.get("rows", [])
    dense_ppl = previous.get("dense_ppl")
    if args.dense_eval and dense_ppl is None:
        dense_ppl = api.evaluate(model, sets, args.device, 1, None, False)[0]["wikitext2"]
    del model
    done = {(r["pattern"], r["variant"]) for r in rows}
    for pattern in args.patterns.split(","):
        for variant in args.variants.split(","):
            if variant == "losa-no-rmi" and pattern != "unstructured":
                continue  # RMI rates apply to unstructured sparsity only: identical to losa
            if (pattern, variant) in done:
                continue
            rows.append(run_variant(variant, pattern, args, calib, sets))
            Path(args.out).write_text(json.dumps({"args": vars(args), "dense_ppl": dense_ppl, "rows": rows,
                                                  "environment": env}, indent=2))
    print(markdown(rows, dense_ppl, args))


if __name__ == "__main__":
    main()
