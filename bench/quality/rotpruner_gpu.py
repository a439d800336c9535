"""RotPruner against its base pruners under the quick protocol Q, with time per training step and peak memory.

Protocol Q (../shared/data/README.md): SmolLM2-135M fp32; calibration 128 windows × 512 tokens of
wiki.valid.tokens (seed 0); perplexity over the first 40 windows of 1024 tokens of wiki.test.raw.
For each cell (base pruner × pattern) the base pruner alone and RotPruner(base) prune fresh copies
of the dense model with the same calibration windows. Prints one JSON line per cell as it finishes
and a markdown table last.

    python bench/quality/rotpruner_gpu.py --device cuda [--data ../shared/data] [--model smollm2-135m]
        [--cells wanda:unstructured,wanda:2:4,sparsegpt-noupdate:unstructured,...]
        [--epochs 20 | --steps N] [--lr 0.001] [--train-samples 0] [--train-seqlen 0] [--json out.json]
        [--residual-rotations none|attn|mlp|both] [--share-every K] [--c4-windows N]

`--c4-windows N` also measures perplexity over the first N windows of 1024 tokens of
c4/c4.validation_2k.jsonl (the selection set: a method's settings are chosen on C4, WikiText-2 test is reported).

The defaults are RotPrunerConfig's (the authors' schedule: 20 epochs over the 128 windows, one window
a step, Cayley SGD with momentum 0.9, cosine schedule, SR-STE).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # noqa: E402  (bench/environment.py)
from prunekit import RotPrunerConfig, evaluate, load_model, prune  # noqa: E402
from protocol import EVALUATION_SEQLEN, protocol_q, wiki_ppl  # noqa: E402
from prunekit.data import evaluation_windows, read_text_file, tokenize  # noqa: E402
from flags import add_config_flags, config_overrides  # noqa: E402  (bench/flags.py)

CELLS = ["wanda:unstructured", "wanda:2:4", "sparsegpt-noupdate:unstructured", "sparsegpt-noupdate:2:4",
         "magnitude:unstructured", "magnitude:2:4"]
TUNABLE = ("epochs", "steps", "lr", "momentum", "optimizer", "train_samples", "train_seqlen", "train_batch",
           "kl_weight", "mse_weight", "ste", "srste_decay", "train_dtype", "schedule", "residual_rotations",
           "share_every")
C4 = "c4/c4.validation_2k.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="smollm2-135m", help="embedded name or model directory")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--cells", default=",".join(CELLS), help="base:pattern, comma-separated")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (protocol Q: 128)")
    parser.add_argument("--eval-windows", type=int, default=40, help="evaluation windows (protocol Q: 40)")
    parser.add_argument("--c4-windows", type=int, default=0, help="also C4 validation perplexity over this many windows")
    parser.add_argument("--no-baseline", action="store_true", help="skip the base pruners (reuse earlier figures)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense model's evaluation (reuse an earlier one)")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--jsonl", help="append each cell's result here as it finishes")
    add_config_flags(parser, RotPrunerConfig(), TUNABLE)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")

    dense, tokenizer = load_model(args.model)
    calib, sets = protocol_q(tokenizer, Path(args.data), args.nsamples, args.eval_windows)
    c4 = {}
    if args.c4_windows:
        c4_ids = tokenize(tokenizer, read_text_file(Path(args.data) / C4))
        c4 = {"c4": (evaluation_windows(c4_ids, EVALUATION_SEQLEN, args.c4_windows), None)}

    def c4_ppl(model):
        if not c4:
            return None
        model.to(args.device)
        try:
            return evaluate(model, c4, device=args.device, progress=False)[0]["c4"]
        finally:
            model.to("cpu")

    t0 = time.perf_counter()
    dense_ppl = None if args.no_dense else wiki_ppl(dense, sets, args.device)
    dense_c4_ppl = None if args.no_dense else c4_ppl(dense)
    # precision: weights and evaluation in fp32 (strict unless TF32 was enabled); Q's training runs in the
    # config's train_dtype (recorded per row under "config"), which RotPruner sets and restores itself
    env = environment(args.device, "float32", threads=torch.get_num_threads(), dense_ppl=dense_ppl,
                      dense_c4_ppl=dense_c4_ppl, eval_seconds=time.perf_counter() - t0)
    print(json.dumps(env), flush=True)

    overrides = config_overrides(args, TUNABLE)
    rows = []
    for cell in args.cells.split(","):
        base, pattern = cell.split(":", 1)
        config = RotPrunerConfig(sparsity=0.5, pattern=pattern, base_pruner=base, **overrides)
        row = {"base": base, "pattern": pattern}
        if not args.no_baseline:
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            prune(model, config.base_config(), calib, device=args.device, progress=False)
            row["base_seconds"] = time.perf_counter() - t0
            row["base_ppl"] = wiki_ppl(model, sets, args.device)
            if c4:
                row["base_c4_ppl"] = c4_ppl(model)
            del model
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        result = prune(model, config, calib, device=args.device, progress=False)
        row["rot_seconds"] = time.perf_counter() - t0
        row["rot_ppl"] = wiki_ppl(model, sets, args.device)
        if c4:
            row["rot_c4_ppl"] = c4_ppl(model)
        row["achieved_sparsity"] = result.achieved_sparsity
        row["details"] = result.details["rotpruner"]
        row["config"] = {k: v for k, v in dataclasses.asdict(config).items() if k in TUNABLE}
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps({**row, "dense_ppl": dense_ppl, "dense_c4_ppl": dense_c4_ppl, "device": env["machine"],
                                    "precision": env["precision"]}) + "\n")

    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    print(f"\n{env['machine']}, torch {env['torch']}, {env['precision']['label']}; dense ppl {dense_ppl}")
    print("| base pruner | pattern | base ppl | RotPruner ppl | margin | steps × tokens | s/step | peak memory GiB"
          " | RotPruner total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["details"]["training"]
        base_ppl = r.get("base_ppl")
        margin = f"{base_ppl - r['rot_ppl']:+.3f} ({100 * (r['rot_ppl'] / base_ppl - 1):+.1f}%)" if base_ppl else "—"
        print(f"| {r['base']} | {r['pattern']} | {base_ppl:.3f} | " if base_ppl else f"| {r['base']} | {r['pattern']} | — | ",
              end="")
        print(f"{r['rot_ppl']:.3f} | {margin} | {t['steps']} × {t['tokens_per_step']} | {t['seconds_per_step']:.3f} "
              f"| {t['peak_memory_bytes'] / 2**30:.2f} ({t['peak_memory_kind']}) | {r['rot_seconds']:.0f} |")


if __name__ == "__main__":
    main()
