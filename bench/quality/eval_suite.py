"""The evaluation suite for one model: dense, Wanda and SparseGPT at 50% unstructured and 2:4.

Calibration follows protocol Q (../shared/data/README.md): 128 windows of 512 tokens of
wikitext2/wiki.valid.tokens, starts from torch.randint seeded with 0, with BOS first for models that
need it (--eval-bos auto). Every cell is evaluated on perplexity (the first --max-eval-segments windows of
--eval-seqlen tokens of wikitext2/wiki.test.raw, c4/c4.validation_2k.jsonl and ptb/ptb.valid.txt) and
zero-shot accuracy on lm-eval's 8 tasks over the local files of zeroshot/. Prints one markdown table
and writes JSON. With --json, cells already in the file (same settings) are kept and skipped, so a
run cut short by a time limit resumes where it stopped.

    python bench/quality/eval_suite.py --model smollm2-135m [--data ../shared/data] [--limit N] [--json out.json]
        [--cells dense,wanda:unstructured,wanda:2:4,sparsegpt:unstructured,sparsegpt:2:4] [--device cuda]

Structured cells for the same table: --cells slicegpt:0.2,rotpruner-structured:0.2,slicegpt:0.3,...
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

import torch  # noqa: E402

from prunekit import (RotPrunerStructuredConfig, SliceGPTConfig, SparseGPTConfig, WandaConfig, api, bos_id,  # noqa: E402
                      load_model, prune)
from prunekit.data import calibration_windows, evaluation_windows, read_text_file, tokenize  # noqa: E402
from prunekit.eval import zeroshot  # noqa: E402
from prunekit.eval.table import results_table  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # noqa: E402  (bench/environment.py)

CELLS = ["dense", "wanda:unstructured", "wanda:2:4", "sparsegpt:unstructured", "sparsegpt:2:4"]
CONFIGS = {"wanda": WandaConfig, "sparsegpt": SparseGPTConfig}
PERPLEXITY_FILES = {"wikitext2": "wikitext2/wiki.test.raw", "c4": "c4/c4.validation_2k.jsonl",
                    "ptb": "ptb/ptb.valid.txt"}
CALIBRATION_FILE = "wikitext2/wiki.valid.tokens"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name or model directory")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--tasks", default=",".join(zeroshot.task_names()), help="zero-shot tasks ('none' skips)")
    parser.add_argument("--limit", type=int, help="zero-shot: first N documents per task (a quick, limited run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluation batch (default 32 on GPU, 4 on CPU)")
    parser.add_argument("--eval-seqlen", type=int, default=1024)
    parser.add_argument("--max-eval-segments", type=int, default=40)
    parser.add_argument("--eval-bos", default="auto", choices=api.BOS_MODES)
    parser.add_argument("--json", help="write results here (and resume from the cells already in it)")
    return parser.parse_args(argv)


def cell_config(cell: str):
    """"wanda:2:4" → WandaConfig(0.5, "2:4"); "slicegpt:0.3" / "rotpruner-structured:0.3" → that slicing
    (RotPruner-structured with the 256 training steps of bench/quality/slicegpt_gpu.py's measured run)."""
    method, arg = cell.split(":", 1)
    if method == "slicegpt":
        return SliceGPTConfig(slicing=float(arg))
    if method == "rotpruner-structured":
        return RotPrunerStructuredConfig(slicing=float(arg), steps=256)
    return CONFIGS[method](sparsity=0.5, pattern=arg)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for cell in cells:
        if cell != "dense":
            cell_config(cell)  # unknown method or pattern: fail before loading anything
    names = [] if args.tasks == "none" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    batch_size = args.batch_size or (32 if args.device.startswith("cuda") else 4)

    t0 = time.perf_counter()
    tasks = zeroshot.load_tasks(names, data / "zeroshot", progress=False) if names else {}
    dense, tokenizer = load_model(args.model, args.dtype, "cpu")
    bos = bos_id(dense, tokenizer, args.eval_bos)
    calib = calibration_windows(tokenize(tokenizer, read_text_file(data / CALIBRATION_FILE)), 128, 512, 0, bos)
    sets = {name: (evaluation_windows(tokenize(tokenizer, read_text_file(data / file)), args.eval_seqlen,
                                      args.max_eval_segments, bos), None)
            for name, file in PERPLEXITY_FILES.items()}
    print(f"loaded model, calibration, {len(sets)} perplexity sets and {len(tasks)} tasks in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    settings = {"model": args.model, "dtype": args.dtype, "bos_mode": args.eval_bos, "bos": bos is not None,
                "calibration": f"{CALIBRATION_FILE}: 128 windows x 512 tokens, seed 0",
                "eval_seqlen": args.eval_seqlen, "max_eval_segments": args.max_eval_segments,
                "perplexity_files": PERPLEXITY_FILES, "tasks": names, "limit": args.limit,
                "batch_size": batch_size, "lm_eval": zeroshot.lm_eval_version() if names else None}
    results = resume(args.json, settings)
    for cell in cells:
        if cell in results:
            print(f"{cell}: already in {args.json}", file=sys.stderr)
            continue
        model = dense if cell == "dense" else copy.deepcopy(dense)
        t0 = time.perf_counter()
        if cell != "dense":
            prune(model, cell_config(cell), calib, device=args.device, progress=False)
        prune_seconds = time.perf_counter() - t0
        results[cell] = api.evaluate_suite(model, tokenizer, sets, tasks, device=args.device, batch_size=batch_size,
                                           bos=bos, limit=args.limit, progress=False)
        results[cell]["seconds"]["prune"] = prune_seconds
        results[cell]["environment"] = environment(args.device, args.dtype)  # per cell: a resumed file mixes machines
        model.to("cpu")
        del model
        print(f"{cell}: done ({json.dumps(results[cell]['seconds'])})", file=sys.stderr, flush=True)
        if args.json:
            save(args.json, settings, results)

    ordered = {cell: results[cell] for cell in CELLS + sorted(set(results) - set(CELLS)) if cell in results}
    print(results_table(ordered))
    if not args.json:
        print(json.dumps({"settings": settings, "machines": machines(ordered), "results": ordered}, indent=2))
    return 0


def resume(path: str | None, settings: dict) -> dict:
    """Cells already computed under the same settings; a file with other settings is an error, not a merge."""
    if not path or not Path(path).is_file():
        return {}
    saved = json.loads(Path(path).read_text())
    if saved["settings"] != settings:
        sys.exit(f"{path} holds results under other settings: choose another --json file")
    return saved["results"]


def machines(results: dict, known: dict | None = None) -> dict:
    """Which machine and precision produced each cell (each cell records its own full environment; cells of
    older files that did not are taken from `known`, the file's own "machines")."""
    known = known or {}
    return {cell: f"{r['environment']['machine']}, {r['environment']['precision']['label']}"
            if "environment" in r else known.get(cell, "not recorded") for cell, r in results.items()}


def save(path: str, settings: dict, results: dict) -> None:
    old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps({"settings": settings, "machines": machines(results, old.get("machines")),
                               "results": results}, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
