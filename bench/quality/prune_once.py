"""Prune SmolLM2 once under protocol Q's calibration, with prunekit or llm-compressor, in a fresh process.

For whole-process timing of the two sides (e.g. `/usr/bin/time -v python bench/quality/prune_once.py ...`,
or any A/B process timer): load the model, draw the same calibration windows, prune, report the
seconds of the pruning call itself. Nothing is saved.

    python bench/quality/prune_once.py --side prunekit|llmcompressor --method wanda|sparsegpt --pattern unstructured|2:4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=("prunekit", "llmcompressor"), required=True)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    args = parser.parse_args()

    from protocol import protocol_q
    from parity import CONFIGS
    from prunekit import load_model, prune

    model, tokenizer = load_model("smollm2-135m")
    calib, _ = protocol_q(tokenizer, Path(args.data))
    calib = calib[: args.nsamples]
    t0 = time.perf_counter()
    if args.side == "prunekit":
        prune(model, CONFIGS[args.method](sparsity=0.5, pattern=args.pattern), calib, progress=False)
    else:
        from llmcompressor_side import prune_with_llmcompressor

        prune_with_llmcompressor(model, calib, args.method, 0.5, args.pattern)
    print(f"{args.side} {args.method} {args.pattern} nsamples={args.nsamples}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
