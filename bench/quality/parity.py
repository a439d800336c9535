"""Parity of prunekit's baselines with llm-compressor 0.14 under the quick protocol Q.

Both sides prune the same model (fp32; SmolLM2-135M by default, `--model gemma3-270m` for Gemma 3 270M)
with the same 128 calibration windows of 512 tokens (wiki.valid.tokens, seed 0) and are evaluated on
the same first 40 windows of 1024 tokens of wiki.test.raw. Models whose adapter needs BOS (Gemma)
get it as the first token of every window, calibration and evaluation alike (`--bos`, default
`auto` as `prunekit.bos_id` decides; the BOS position is not scored in the perplexity). Only
decoder-layer linears are pruned on both sides (lm_head and embeddings stay
dense, as in the Wanda and SparseGPT papers). Prints one table: perplexity and pruning wall time
of each side, for Wanda and SparseGPT at 50% unstructured and 2:4.

    python bench/quality/parity.py [--model smollm2-135m] [--bos auto] [--data ../shared/data] [--json results.json]
                           [--cells wanda:unstructured,...]

With --json the file is rewritten after every cell, so a run cut short keeps the cells it finished.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

import torch  # noqa: E402

from prunekit import SparseGPTConfig, WandaConfig, bos_id, evaluate, load_model, prune  # noqa: E402
from protocol import protocol_q  # noqa: E402  (bench/protocol.py)

CELLS = ["wanda:unstructured", "wanda:2:4", "sparsegpt:unstructured", "sparsegpt:2:4"]
CONFIGS = {"wanda": WandaConfig, "sparsegpt": SparseGPTConfig}


def run_metadata(args: argparse.Namespace, bos: int | None, calib: torch.Tensor, sets: dict) -> dict:
    """What the run was: machine, software versions, threads, precision, niceness, data shapes, command."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    return {
        "model": args.model,
        "bos_mode": args.bos,
        "bos_id": bos,
        "machine": f"CPU, {os.cpu_count()} cores ({cpu})",
        "device": "cpu",
        "precision": "fp32",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": pkg("transformers"),
        "llmcompressor": pkg("llmcompressor"),
        "compressed_tensors": pkg("compressed-tensors"),
        "python": platform.python_version(),
        "prunekit_commit": commit,
        "niceness": os.nice(0),
        "loadavg_start": os.getloadavg(),
        "calibration": {"data": "wiki.valid.tokens", "windows": list(calib.shape), "seed": 0},
        "evaluation": {"data": "wiki.test.raw", "windows": list(sets["wikitext2"][0].shape),
                       "bos_scored": False},
        "sparsity": 0.5,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, model directory or .gguf file")
    parser.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                        help="BOS first in every window (auto: as the model's adapter says; Gemma needs it)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--dense", default="first", choices=["first", "last", "skip"],
                        help="when to evaluate the dense model (last: after the cells, for runs short on time)")
    args = parser.parse_args()

    from llmcompressor_side import prune_with_llmcompressor

    dense, tokenizer = load_model(args.model)
    bos = bos_id(dense, tokenizer, args.bos)
    calib, sets = protocol_q(tokenizer, Path(args.data), bos=bos)
    meta = run_metadata(args, bos, calib, sets)
    rows = []
    dense_ppl = dense_eval_s = None

    def write_json() -> None:
        if args.json:
            meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            meta["loadavg_end"] = os.getloadavg()
            Path(args.json).write_text(json.dumps(
                {**meta, "dense_ppl": dense_ppl, "dense_eval_s": dense_eval_s, "rows": rows}, indent=2) + "\n")

    def eval_dense() -> None:
        nonlocal dense_ppl, dense_eval_s
        t0 = time.perf_counter()
        dense_ppl = evaluate(dense, sets, bos=bos, progress=False)[0]["wikitext2"]
        dense_eval_s = time.perf_counter() - t0
        print(f"{args.model} dense: {dense_ppl:.3f}  (bos {bos}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, eval {dense_eval_s:.0f} s)", flush=True)
        write_json()

    if args.dense == "first":
        eval_dense()
    for cell in args.cells.split(","):
        method, pattern = cell.split(":", 1)
        row = {"method": method, "pattern": pattern}
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prune(model, CONFIGS[method](sparsity=0.5, pattern=pattern), calib, progress=False)
        row["prunekit_s"] = time.perf_counter() - t0
        row["prunekit_ppl"], row["prunekit_eval_s"] = evaluate(model, sets, bos=bos, progress=False)
        row["prunekit_ppl"] = row["prunekit_ppl"]["wikitext2"]
        print(f"{cell} prunekit: ppl {row['prunekit_ppl']:.3f}, pruned in {row['prunekit_s']:.0f} s", flush=True)
        model = copy.deepcopy(dense)
        out = prune_with_llmcompressor(model, calib, method, 0.5, pattern)
        row["llmc_s"] = out["seconds"]
        row["llmc_ppl"], row["llmc_eval_s"] = evaluate(model, sets, bos=bos, progress=False)
        row["llmc_ppl"] = row["llmc_ppl"]["wikitext2"]
        row["llmc_settings"] = out["settings"]
        row["loadavg_after"] = os.getloadavg()
        del model
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json()

    if args.dense == "last":
        eval_dense()

    print("\n| method | pattern | prunekit ppl | llm-compressor ppl | ppl diff | prunekit s | llm-compressor s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = 100 * (r["prunekit_ppl"] / r["llmc_ppl"] - 1)
        print(f"| {r['method']} | {r['pattern']} | {r['prunekit_ppl']:.3f} | {r['llmc_ppl']:.3f} | {diff:+.2f}% "
              f"| {r['prunekit_s']:.1f} | {r['llmc_s']:.1f} | {r['llmc_s'] / r['prunekit_s']:.2f}× |")
    write_json()


if __name__ == "__main__":
    main()
