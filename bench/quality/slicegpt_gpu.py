"""SliceGPT against RotPruner-structured under protocol Q, plus prefill/decode speed of the sliced models.

Protocol Q (../shared/data/README.md): fp32; calibration 128 windows × 512 tokens of wiki.valid.tokens
(seed 0); perplexity over the first 40 windows of 1024 tokens of wiki.test.raw. Cells: slicing 0.2 and 0.3
× {slicegpt, rotpruner-structured}, each on a fresh copy of the dense model with the same windows.
Prints one JSON line per cell as it finishes and a markdown table last.

    python bench/quality/slicegpt_gpu.py --device cuda [--model smollm2-135m | DIR | file.gguf] [--data ../shared/data]
        [--slicings 0.2,0.3] [--methods slicegpt,rotpruner-structured] [--steps 200] [--lr 1e-3]
        [--train-seqlen 512] [--speed-batches 1,16] [--round-to 8] [--shared-layer-basis] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

import torch  # noqa: E402

from environment import environment, precision  # noqa: E402  (bench/environment.py)
from prunekit import RotPrunerStructuredConfig, SliceGPTConfig, load_model, prune  # noqa: E402
from protocol import protocol_q, wiki_ppl  # noqa: E402
from flags import add_config_flags, config_overrides  # noqa: E402  (bench/flags.py)
from speed.slicegpt_speed import fuse_norms, measure  # noqa: E402  (bench/speed/slicegpt_speed.py)

TUNABLE = ("steps", "lr", "optimizer", "momentum", "schedule", "train_samples", "train_seqlen", "train_batch",
           "kl_weight", "mse_weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, model directory or .gguf file")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--slicings", default="0.2,0.3")
    parser.add_argument("--methods", default="slicegpt,rotpruner-structured")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (protocol Q: 128)")
    parser.add_argument("--eval-windows", type=int, default=40, help="evaluation windows (protocol Q: 40)")
    parser.add_argument("--speed-batches", default="1,16", help="batch sizes of the speed test; '' skips it")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--speed-dtype", default="float16", help="dtype of the speed test (quality runs are fp32)")
    parser.add_argument("--round-to", type=int, default=8, help="round the kept width to a multiple of this")
    parser.add_argument("--shared-layer-basis", action="store_true",
                        help="one basis per layer (no attention shortcut), for both methods")
    parser.add_argument("--json", help="write all results here")
    add_config_flags(parser, RotPrunerStructuredConfig(steps=200), TUNABLE)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")

    dense, tokenizer = load_model(args.model)
    calib, sets = protocol_q(tokenizer, Path(args.data), args.nsamples, args.eval_windows)
    batches = [int(b) for b in args.speed_batches.split(",") if b.strip()]

    def speed_of(model) -> dict | None:
        """Speed of `model` converted to --speed-dtype (in place: call it last on a model)."""
        if not batches:
            return None
        model.to(getattr(torch, args.speed_dtype))
        result = measure(model, args.device, batches, args.prompt_len, args.gen_len, repeats=5)
        model.to("cpu")
        return result | {"dtype": args.speed_dtype}

    # precision: pruning and perplexity in fp32 ("precision"), the speed test in --speed-dtype ("speed_precision")
    env = environment(args.device, "float32", speed_precision=precision(args.speed_dtype, args.device),
                      model=args.model, dense_ppl=wiki_ppl(dense, sets, args.device),
                      dense_parameters=sum(p.numel() for p in dense.parameters()))
    env["dense_speed"] = env["dense_fused_norm_speed"] = None
    if batches:
        env["dense_speed"] = speed_of(copy.deepcopy(dense))
        # control: the dense model with the sliced model's fused norm kernel, to tell the two gains apart
        fused = copy.deepcopy(dense)
        env["dense_fused_norms"] = fuse_norms(fused)
        env["dense_fused_norm_speed"] = speed_of(fused)
        del fused
    print(json.dumps(env), flush=True)

    overrides = config_overrides(args, TUNABLE)
    rows = []
    for slicing in [float(s) for s in args.slicings.split(",")]:
        for method in args.methods.split(","):
            common = {"slicing": slicing, "round_to": args.round_to, "shared_layer_basis": args.shared_layer_basis}
            config = (SliceGPTConfig(**common) if method == "slicegpt"
                      else RotPrunerStructuredConfig(**common, **overrides))
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            result = prune(model, config, calib, device=args.device, progress=False)
            row = {"method": method, "slicing": slicing, "seconds": time.perf_counter() - t0,
                   "ppl": wiki_ppl(model, sets, args.device), "details": result.details[method]}
            row["speed"] = speed_of(model)
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)

    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    print(f"\n{env['machine']}, torch {env['torch']}; dense ppl {env['dense_ppl']:.3f}, "
          f"{env['dense_parameters'] / 1e6:.2f} M parameters")
    print("| method | slicing | ppl | parameters (M) | prune s | " +
          " | ".join(f"prefill/decode tok/s b{b}" for b in batches) + " |")
    print("|---|---|---|---|---|" + "---|" * len(batches))
    for r in rows:
        speeds = [f"{s['prefill_tokens_per_s']:.0f} / {s['decode_tokens_per_s']:.0f}" for s in r["speed"]["rows"]] \
            if r["speed"] else []
        print(f"| {r['method']} | {r['slicing']} | {r['ppl']:.3f} | {r['details']['parameters_after'] / 1e6:.2f} | "
              f"{r['seconds']:.0f} | " + " | ".join(speeds) + " |")


if __name__ == "__main__":
    main()
