"""Parity of prunekit's baselines with llm-compressor 0.14 under the quick protocol Q.

Both sides prune the same SmolLM2-135M (fp32) with the same 128 calibration windows of 512 tokens
(wiki.valid.tokens, seed 0) and are evaluated on the same first 40 windows of 1024 tokens of
wiki.test.raw. Only decoder-layer linears are pruned on both sides (lm_head and embeddings stay
dense, as in the Wanda and SparseGPT papers). Prints one table: perplexity and pruning wall time
of each side, for Wanda and SparseGPT at 50% unstructured and 2:4.

    python bench/parity.py [--data ../shared/data] [--json results.json] [--cells wanda:unstructured,...]
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
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from prunekit import SparseGPTConfig, WandaConfig, evaluate, load_model, prune  # noqa: E402
from prunekit.data import calibration_windows, evaluation_windows, read_text_file, tokenize  # noqa: E402

CELLS = ["wanda:unstructured", "wanda:2:4", "sparsegpt:unstructured", "sparsegpt:2:4"]
CONFIGS = {"wanda": WandaConfig, "sparsegpt": SparseGPTConfig}


def protocol_q(tokenizer, data_dir: Path, nsamples: int = 128, eval_windows: int = 40):
    """Protocol Q's calibration windows (nsamples × 512 of wiki.valid.tokens, seed 0) and its evaluation set
    (the first eval_windows × 1024 tokens of wiki.test.raw), as {"wikitext2": (windows, None)}."""
    calib_ids = tokenize(tokenizer, read_text_file(data_dir / "wikitext2" / "wiki.valid.tokens"))
    eval_ids = tokenize(tokenizer, read_text_file(data_dir / "wikitext2" / "wiki.test.raw"))
    calib = calibration_windows(calib_ids, nsamples, 512, seed=0)
    windows = evaluation_windows(eval_ids, 1024, eval_windows)
    return calib, {"wikitext2": (windows, None)}


def wiki_ppl(model, sets, device: str) -> float:
    """Protocol Q perplexity with the whole model on `device` (pruning keeps it on the CPU)."""
    model.to(device)
    try:
        return evaluate(model, sets, device=device, progress=False)[0]["wikitext2"]
    finally:
        model.to("cpu")


def add_config_flags(parser: argparse.ArgumentParser, defaults, names) -> None:
    """A `--name` flag for each config field in `names`, typed and defaulted by the `defaults` instance."""
    for name in names:
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)


def config_overrides(args: argparse.Namespace, names) -> dict:
    """The values of the flags `add_config_flags` made, as config keyword arguments."""
    return {name: getattr(args, name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cells", default=",".join(CELLS))
    args = parser.parse_args()

    from llmcompressor_side import prune_with_llmcompressor

    dense, tokenizer = load_model("smollm2-135m")
    calib, sets = protocol_q(tokenizer, Path(args.data))
    dense_ppl = evaluate(dense, sets, progress=False)[0]["wikitext2"]
    print(f"dense: {dense_ppl:.3f}  (torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True)
    rows = []
    for cell in args.cells.split(","):
        method, pattern = cell.split(":", 1)
        row = {"method": method, "pattern": pattern}
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prune(model, CONFIGS[method](sparsity=0.5, pattern=pattern), calib, progress=False)
        row["prunekit_s"] = time.perf_counter() - t0
        row["prunekit_ppl"] = evaluate(model, sets, progress=False)[0]["wikitext2"]
        model = copy.deepcopy(dense)
        out = prune_with_llmcompressor(model, calib, method, 0.5, pattern)
        row["llmc_s"] = out["seconds"]
        row["llmc_ppl"] = evaluate(model, sets, progress=False)[0]["wikitext2"]
        del model
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| method | pattern | prunekit ppl | llm-compressor ppl | ppl diff | prunekit s | llm-compressor s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = 100 * (r["prunekit_ppl"] / r["llmc_ppl"] - 1)
        print(f"| {r['method']} | {r['pattern']} | {r['prunekit_ppl']:.3f} | {r['llmc_ppl']:.3f} | {diff:+.2f}% "
              f"| {r['prunekit_s']:.1f} | {r['llmc_s']:.1f} | {r['llmc_s'] / r['prunekit_s']:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps({"dense_ppl": dense_ppl, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
