"""2:4 + FP8 against the same 2:4 model unquantized, under protocol Q (issue 25's quality goal: perplexity at most
1.02 × the 2:4 model's).

Per model: SparseGPT 2:4 (the reference), SparseGPT 2:4 with `quantize="fp8"` (one column pass: mask, FP8
rounding of the kept weights, both errors compensated; evaluated W8A8 — inputs FP8 per token — and weights-only),
and Wanda 2:4 followed by GPTQ to FP8 (prunekit.quantize: the mask kept, the rounding error compensated) as the
path for any other pruner. The `dense*` cells (not in the default list) measure what FP8 costs the model with no
pruning: round to nearest (W8A8 and weights only) and GPTQ (W8A8). Every cell is scored on WikiText-2 test (protocol Q's 40 × 1024 windows) and on C4
validation (`--val-windows` × 1024 of shared/data/c4/c4.validation_2k.jsonl). The FP8 layers compute on the CPU
through their exact reference product (FP8 values and scales, products in fp32), so the figures are the FP8
numbers' effect, not a kernel's. One JSON line per cell in `--out`; cells already there are skipped.
`--scale-headroom K` sets the column pass's FP8 scale headroom (prunekit.pruners.sparsegpt.SCALE_HEADROOM, in
binades above each dense row's largest weight) for a selection sweep on C4 validation; rows record it.
`--act-order` runs the SparseGPT cells' column pass in act-order (SparseGPTConfig.act_order); rows record it. The
`sparsegpt-50%` cell (unstructured, not in the default list) is there to see what act-order does without N:M groups.
`--eval-dtype bfloat16` prunes in fp32 as always, then scores the model cast to bf16 (the FP8 layers keep their FP8
weights and fp32 scales, and return bf16 as the GPU kernels do): the issue's own comparison, "the same 2:4 model in
bf16"; rows record it.

    PYTHONPATH=src python bench/quality/fp8_quality.py --model smollm2-135m --out bench/results/fp8_quality_cpu.jsonl
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CELLS = ("sparsegpt-2:4", "sparsegpt-2:4+fp8", "sparsegpt-2:4+fp8-weights", "wanda-2:4", "wanda-2:4+gptq-fp8")
OTHER_CELLS = ("sparsegpt-50%",)  # unstructured 50%
DENSE_CELLS = ("dense", "dense+fp8-rtn", "dense+fp8-rtn-weights", "dense+gptq-fp8")  # what FP8 costs with no pruning


def run_cell(name: str, model, calib, device: str, act_order: bool = False):
    """Prune (and quantize) `model` in place as the cell says."""
    import prunekit
    from prunekit import FP8Config, SparseGPTConfig, WandaConfig

    if name.startswith("dense"):
        if name != "dense":
            prunekit.quantize(model, FP8Config(compensate="gptq" in name,
                                               activations="none" if name.endswith("-weights") else "fp8"),
                              calib if "gptq" in name else None, device=device, progress=False)
    elif name.startswith("sparsegpt"):
        pattern = "unstructured" if name == "sparsegpt-50%" else "2:4"
        prunekit.prune(model, SparseGPTConfig(pattern=pattern, sparsity=0.5, quantize="fp8" if "fp8" in name else "none",
                                              act_order=act_order), calib,
                       device=device, progress=False)
        if name.endswith("-weights"):  # the same FP8 weights, inputs left unquantized
            prunekit.quantize(model, FP8Config(compensate=False, activations="none"))
    else:
        prunekit.prune(model, WandaConfig(pattern="2:4"), calib, device=device, progress=False)
        if "gptq" in name:
            prunekit.quantize(model, FP8Config(), calib, device=device, progress=False)


def cell_key(model: str, cell: str, headroom: int | None, act_order: bool | None, eval_dtype: str | None) -> tuple:
    """What makes a row one cell: an FP8 cell's scale headroom too (rows from before `--scale-headroom` had 0), a
    SparseGPT cell's column order (rows from before `--act-order` had none) and the dtype it was scored in (rows from
    before `--eval-dtype`: float32)."""
    return (model, cell, (headroom or 0) if uses_headroom(cell) else None,
            bool(act_order) and cell.startswith("sparsegpt"), eval_dtype or "float32")


def uses_headroom(cell: str) -> bool:
    """Whether the cell runs the column pass with FP8 (SparseGPT's or GPTQ's), whose scales take the headroom;
    rounding to nearest does not."""
    return "fp8" in cell and "rtn" not in cell


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local directory, .gguf file or hub id")
    known = CELLS + DENSE_CELLS + OTHER_CELLS
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {', '.join(known)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--val-windows", type=int, default=20, help="C4 validation windows of 1024 tokens")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", required=True, help="JSONL file: one line per cell, appended")
    p.add_argument("--act-order", action="store_true", help="the SparseGPT cells' column pass in act-order "
                   "(SparseGPTConfig.act_order)")
    p.add_argument("--eval-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the dtype the pruned model is scored in (it is always pruned in fp32)")
    p.add_argument("--scale-headroom", type=int, help="binades of FP8 scale headroom in the column pass "
                   "(default: the library's SCALE_HEADROOM)")
    args = p.parse_args()
    unknown = [c for c in args.cells.split(",") if c not in known]
    if unknown:
        p.error(f"unknown cell {unknown[0]!r}: choose from {', '.join(known)}")

    from environment import environment
    from protocol import protocol_q

    import torch

    import prunekit
    from prunekit.data import evaluation_windows, load_text, tokenize
    from prunekit.models.adapters import get_adapter
    from prunekit.pruners import sparsegpt

    dense, tokenizer = prunekit.load_model(args.model, "float32")
    bos = tokenizer.bos_token_id if get_adapter(dense).needs_bos else None
    calib, test = protocol_q(tokenizer, Path(args.data), bos=bos)
    c4 = load_text(str(Path(args.data) / "c4" / "c4.validation_2k.jsonl"), "evaluation").text
    sets = {"c4-val": (evaluation_windows(tokenize(tokenizer, c4), 1024, args.val_windows, bos_id=bos), None), **test}
    if args.scale_headroom is not None:
        sparsegpt.SCALE_HEADROOM = args.scale_headroom
    headroom = sparsegpt.SCALE_HEADROOM
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line] if out.exists() else []
    done = {cell_key(r["model"], r["cell"], r.get("scale_headroom"), r.get("act_order"), r.get("eval_dtype"))
            for r in rows}
    env = environment(args.device, args.eval_dtype)
    for name in args.cells.split(","):
        if cell_key(args.model, name, headroom, args.act_order, args.eval_dtype) in done:
            continue
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        run_cell(name, model, calib, args.device, args.act_order)
        seconds = time.perf_counter() - t0
        model = model.to(device=args.device, dtype=getattr(torch, args.eval_dtype))
        ppl, _ = prunekit.evaluate(model, sets, device=args.device, bos=bos, progress=False)
        row = {"model": args.model, "cell": name, "prune_s": seconds,
               "scale_headroom": headroom if uses_headroom(name) else None,
               "act_order": args.act_order if name.startswith("sparsegpt") else None, "eval_dtype": args.eval_dtype,
               "c4_val_ppl": ppl["c4-val"],
               "wikitext2_test_ppl": ppl["wikitext2"], "environment": env}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: c4-val {ppl['c4-val']:.2f}, wikitext2 {ppl['wikitext2']:.2f} ({seconds:.0f} s)", flush=True)
        del model


if __name__ == "__main__":
    main()
