"""FISTAPruner vs SparseGPT vs Wanda under the quick protocol Q, with FISTAPruner's ablations.

SmolLM2-135M-Instruct (fp32), 128 calibration windows of 512 tokens of wiki.valid.tokens (seed 0),
perplexity over the first 40 windows of 1024 tokens of wiki.test.raw (see ../shared/data/README.md), and with
`--val-windows N` also over the first N windows of 1024 tokens of C4 validation: the set that chooses FISTA's
defaults (neither calibration nor test data; the WikiText-2 column is only reported).
A cell is `method/pattern[/option=value,...]`, the options being the method's config fields, e.g.
`fista/2:4/error_correction=none`. Each finished cell prints one JSON line; with --json the results
are kept in that file and cells already there are skipped, so a long CPU run can be resumed.
Prints a markdown table last.

    python bench/quality/fista_quality.py [--device cuda] [--model smollm2-135m] [--data ../shared/data] [--json q.json] [--cells ...]
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

from environment import machine, precision  # noqa: E402  (bench/environment.py)
from protocol import c4_validation, perplexities, protocol_q  # noqa: E402
from prunekit import load_model, prune  # noqa: E402
from prunekit.pruners import PRUNERS as CONFIGS  # noqa: E402

CELLS = [
    "wanda/unstructured", "sparsegpt/unstructured", "fista/unstructured",
    "wanda/2:4", "sparsegpt/2:4", "fista/2:4",
    # error correction ablation (intra is the default)
    "fista/unstructured/error_correction=none", "fista/unstructured/error_correction=intra+inter",
    "fista/2:4/error_correction=none", "fista/2:4/error_correction=intra+inter",
    # warm start ablation (wanda is the default)
    "fista/unstructured/warm_start=zero", "fista/2:4/warm_start=zero",
]
#: `--cells all`: CELLS and the penalty and refit ablations
ALL_CELLS = CELLS + ["fista/unstructured/penalty=l1", "fista/2:4/penalty=l1",
                     "fista/unstructured/refit_iters=0", "fista/2:4/refit_iters=0"]


def parse_cell(cell: str):
    """(method, pattern, {option: value}) from `method/pattern[/k=v,...]`, values typed by the config field."""
    parts = cell.split("/")
    if len(parts) not in (2, 3) or parts[0] not in CONFIGS:
        raise SystemExit(f"bad cell {cell!r}: use method/pattern[/option=value,...] with a method of {', '.join(CONFIGS)}")
    method, pattern = parts[0], parts[1]
    fields = CONFIGS[method].__dataclass_fields__
    options = {}
    for item in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"bad cell {cell!r}: {method} has no option {key!r}")
        kind = fields[key].type
        options[key] = (value.lower() in ("1", "true", "yes")) if kind in (bool, "bool") else \
            {"int": int, "float": float}.get(kind, str)(value)
    return method, pattern, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, model directory or .gguf file")
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated, or 'all' (the ablations too); a "
                        "cell's own options use ';' instead of ',' here (fista/2:4/warm_start=zero;iters=20)")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (protocol Q: 128)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--val-windows", type=int, default=0,
                        help="also score C4 validation over this many windows of 1024 tokens (0: WikiText-2 only)")
    parser.add_argument("--json", help="keep results here; cells already in it are skipped")
    args = parser.parse_args()
    cells = ALL_CELLS if args.cells == "all" else [c.replace(";", ",") for c in args.cells.split(",") if c]
    for cell in cells:
        parse_cell(cell)  # fail on a bad cell before any long work

    saved = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    rows = saved.get("rows", {})
    dense, tokenizer = load_model(args.model)
    calib, sets = protocol_q(tokenizer, Path(args.data))
    calib = calib[:args.nsamples]
    if args.val_windows:
        sets = {**sets, **c4_validation(tokenizer, Path(args.data), args.val_windows)}
    meta = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "nsamples": args.nsamples, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "machine": machine(args.device), "precision": precision("float32", args.device)}
    if "dense_ppl" not in saved or (args.val_windows and (saved.get("dense_c4_val_ppl") is None
                                                          or saved.get("val_windows") != args.val_windows)):
        dense_ppl = perplexities(dense, sets, args.device)
        saved["dense_ppl"], saved["dense_c4_val_ppl"] = dense_ppl["wikitext2"], dense_ppl.get("c4-val")
        saved["val_windows"] = args.val_windows
    print(f"dense: {saved['dense_ppl']:.3f}  {json.dumps(meta)}", flush=True)

    for cell in cells:
        if cell in rows and (not args.val_windows or (rows[cell].get("c4_val_ppl") is not None
                                                      and rows[cell].get("val_windows") == args.val_windows)):
            continue
        method, pattern, options = parse_cell(cell)
        config = CONFIGS[method](sparsity=args.sparsity, pattern=pattern, **options)
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        result = prune(model, config, calib, device=args.device, progress=False)
        seconds = time.perf_counter() - t0
        ppl = perplexities(model, sets, args.device)
        rows[cell] = {"ppl": ppl["wikitext2"], "c4_val_ppl": ppl.get("c4-val"), "val_windows": args.val_windows,
                      "prune_s": seconds, "sparsity": result.achieved_sparsity, **meta,
                      "timings": result.timings}
        del model
        print(json.dumps({"cell": cell, **rows[cell]}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({**saved, "rows": rows}, indent=2))

    print(f"\ndense perplexity {saved['dense_ppl']:.2f}; {meta['device']}{' ' + meta['gpu'] if meta['gpu'] else ''}, "
          f"{args.nsamples} calibration windows\n")
    print("| method | pattern | options | C4 val ppl (chooses) | WikiText-2 test ppl | vs sparsegpt (test) | pruning s |")
    print("|---|---|---|---|---|---|---|")
    for cell in cells:
        method, pattern, options = parse_cell(cell)
        row = rows[cell]
        base = rows.get(f"sparsegpt/{pattern}")
        versus = f"{100 * (row['ppl'] / base['ppl'] - 1):+.1f}%" if base else "—"
        opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        val = f"{row['c4_val_ppl']:.2f}" if row.get("c4_val_ppl") else "—"
        print(f"| {method} | {pattern} | {opts} | {val} | {row['ppl']:.2f} | {versus} | {row['prune_s']:.0f} |")


if __name__ == "__main__":
    main()
