"""OWL and the measured-loss allocation against uniform sparsity under protocol Q, λ and M chosen on validation.

For each model: Wanda (or `--method`) at `--sparsity` with `--layer-sparsity uniform`, then with OWL for every
(M, λ) of the grid, and with `--allocations ...,sensitivity` (or `sensitivity-blocks`) the measured-loss allocation
for every λ of the grid (its step either side of the target; M unused). Every run is scored on C4 validation (the first `--val-windows`
windows of 1024 tokens of shared/data/c4/c4.validation_2k.jsonl: neither calibration nor test data) and on protocol
Q's WikiText-2 test windows. The choice of (M, λ) reads the validation column only; the test column of the chosen
cell is the figure to report. Calibration: protocol Q's 128 windows of WikiText-2 validation. One JSON line per run,
appended; cells already in the output file are not run again.

    PYTHONPATH=src python bench/quality/owl_sweep.py --model smollm2-135m --output bench/results/owl_smollm2_cpu.jsonl
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="wanda")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--m", default="5,7,10", help="OWL M values to try")
    p.add_argument("--lam", default="0.04,0.08,0.12", help="λ values to try (OWL's band; sensitivity's step)")
    p.add_argument("--allocations", default="owl",
                   help="owl, sensitivity and/or sensitivity-blocks, comma-separated (uniform always runs)")
    p.add_argument("--val-windows", type=int, default=20)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", required=True)
    args = p.parse_args()
    allocations = args.allocations.split(",")
    if not set(allocations) <= {"owl", "sensitivity", "sensitivity-blocks"}:
        p.error(f"--allocations {args.allocations}: each must be owl, sensitivity or sensitivity-blocks (uniform "
                "always runs)")

    from environment import environment
    from protocol import protocol_q

    import prunekit
    from prunekit.data import evaluation_windows, load_text, tokenize
    from prunekit.methods import config_class
    from prunekit.models.adapters import get_adapter

    dense, tokenizer = prunekit.load_model(args.model)
    bos = tokenizer.bos_token_id if get_adapter(dense).needs_bos else None
    calib, test = protocol_q(tokenizer, Path(args.data), bos=bos)
    c4 = load_text(str(Path(args.data) / "c4" / "c4.validation_2k.jsonl"), "evaluation").text
    val = {"c4-val": (evaluation_windows(tokenize(tokenizer, c4), 1024, args.val_windows, bos_id=bos), None)}
    sets = {**val, **test}
    lams = [float(lam) for lam in args.lam.split(",")]
    cells = [("uniform", None, None)]
    cells += [("owl", float(m), lam) for m in args.m.split(",") for lam in lams] if "owl" in allocations else []
    cells += [(kind, None, lam) for kind in ("sensitivity", "sensitivity-blocks") if kind in allocations
              for lam in lams]
    out = Path(args.output)
    done = set()  # cells already in the output (a rerun with a wider grid runs only the new ones)
    if out.exists():
        for r in map(json.loads, filter(None, out.read_text().splitlines())):
            done.add((r["model"], r["method"], r["sparsity"], r["allocation"], r["M"], r["lambda"],
                      r.get("val_windows", 20), r["environment"].get("device", "cpu")))
    for allocation, m, lam in cells:
        if (args.model, args.method, args.sparsity, allocation, m, lam, args.val_windows, args.device) in done:
            continue
        options = {} if allocation == "uniform" else {"layer_sparsity": allocation, "owl_lambda": lam}
        if allocation == "owl":
            options["owl_m"] = m
        config = config_class(args.method)(sparsity=args.sparsity, **options)
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        result = prunekit.prune(model, config, calib, device=args.device, progress=False)
        seconds = time.perf_counter() - t0
        ppl, _ = prunekit.evaluate(model.to(args.device), sets, device=args.device, bos=bos, progress=False)
        row = {"model": args.model, "method": args.method, "sparsity": args.sparsity, "allocation": allocation,
               "M": m, "lambda": lam, "c4_val_ppl": ppl["c4-val"], "wikitext2_test_ppl": ppl["wikitext2"],
               "achieved_sparsity": result.achieved_sparsity, "prune_s": seconds, "val_windows": args.val_windows,
               "rates": result.details.get("layer_sparsity", {}).get("rates"),
               "sensitivity_losses": result.details.get("layer_sparsity", {}).get("losses"),
               "dense_loss": result.details.get("layer_sparsity", {}).get("dense_loss"),
               "environment": environment(args.device, "float32")}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{allocation} M={m} λ={lam}: c4-val {ppl['c4-val']:.2f}, wikitext2 {ppl['wikitext2']:.2f} "
              f"({seconds:.0f} s)", flush=True)
        del model


if __name__ == "__main__":
    main()
