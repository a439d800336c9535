"""Mixed N:M against uniform N:M under protocol Q: uniform 2:4 vs mixed-2:4 and uniform 2:8 vs mixed-2:8.

For each pruner of `--pruners` (default wanda, sparsegpt) and each M: the uniform N:M run, then mixed-N:M with
each allocation of `--allocations` (owl for every (M, λ) of its grid, rmi, sensitivity), each layer pruned at its
own N_l:M, the N_l averaging N. Every run is scored on C4 validation (the first `--val-windows` windows of 1024 tokens of
shared/data/c4/c4.validation_2k.jsonl: the selection set, neither calibration nor test data) and on protocol Q's
WikiText-2 test windows (40 × 1024 of wiki.test.raw); calibration is protocol Q's 128 × 512 windows of
wiki.valid.tokens (seed 0). Choose an allocation (and OWL's M, λ) on the C4 column; report the WikiText-2 column
of the chosen cell. One JSON line per cell in `--out`; cells already there are skipped (a rerun resumes).

OWL's λ: `step` is the mixed pattern's default, one step of N (1/M: N − 1, N or N + 1); a number bounds the
layer rates to the target ± λ as for unstructured OWL.

    PYTHONPATH=src python bench/quality/mixed_nm.py --device cuda --out bench/results/mixed_nm_smollm2.jsonl
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


def cells(args) -> list[dict]:
    """Every run: the dense model, then per pruner and pattern the uniform N:M and each mixed allocation."""
    runs = [{"pruner": None, "pattern": "dense", "allocation": None}]
    for pruner in args.pruners.split(","):
        for nm in args.patterns.split(","):
            runs.append({"pruner": pruner, "pattern": nm, "allocation": "uniform"})
            for allocation in args.allocations.split(","):
                if allocation == "owl":
                    runs += [{"pruner": pruner, "pattern": f"mixed-{nm}", "allocation": "owl", "owl_m": float(m),
                              "owl_lambda": lam} for m in args.owl_m.split(",") for lam in args.owl_lambda.split(",")]
                else:
                    runs.append({"pruner": pruner, "pattern": f"mixed-{nm}", "allocation": allocation})
    return runs


def config_of(cell: dict):
    from prunekit.methods import config_class
    from prunekit.patterns import Pattern

    options = {}
    if cell["allocation"] != "uniform":
        options["layer_sparsity"] = cell["allocation"]
    if cell["allocation"] == "owl":
        options["owl_m"] = cell["owl_m"]
        if cell["owl_lambda"] != "step":
            options["owl_lambda"] = float(cell["owl_lambda"])
    return config_class(cell["pruner"])(pattern=Pattern.parse(cell["pattern"]), **options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local directory, .gguf file or hub id")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pruners", default="wanda,sparsegpt")
    p.add_argument("--patterns", default="2:4,2:8", help="the uniform N:M patterns; each is also run as mixed-N:M")
    p.add_argument("--allocations", default="owl,rmi", help="how mixed-N:M picks each layer's N")
    p.add_argument("--owl-m", default="5", help="OWL's outlier threshold M, comma-separated for a grid")
    p.add_argument("--owl-lambda", default="step", help="OWL's λ: 'step' (1/M) or numbers, comma-separated")
    p.add_argument("--val-windows", type=int, default=20, help="C4 validation windows of 1024 tokens")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", required=True, help="JSONL file: one line per cell, appended")
    args = p.parse_args()

    from environment import environment
    from protocol import protocol_q

    import prunekit
    from prunekit.data import evaluation_windows, load_text, tokenize
    from prunekit.models.adapters import get_adapter

    dense, tokenizer = prunekit.load_model(args.model, args.dtype)
    bos = tokenizer.bos_token_id if get_adapter(dense).needs_bos else None
    calib, test = protocol_q(tokenizer, Path(args.data), bos=bos)
    c4 = load_text(str(Path(args.data) / "c4" / "c4.validation_2k.jsonl"), "evaluation").text
    sets = {"c4-val": (evaluation_windows(tokenize(tokenizer, c4), 1024, args.val_windows, bos_id=bos), None), **test}

    out = Path(args.out)
    key = ("model", "dtype", "pruner", "pattern", "allocation", "owl_m", "owl_lambda")
    done = set()
    if out.exists():
        done = {tuple(row.get(k) for k in key) for row in map(json.loads, out.read_text().splitlines()) if row}
    env = environment(args.device, args.dtype)
    for cell in cells(args):
        row = {"model": args.model, "dtype": args.dtype, "owl_m": None, "owl_lambda": None, **cell}
        if tuple(row.get(k) for k in key) in done:
            continue
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        if cell["pruner"] is not None:
            result = prunekit.prune(model, config_of(cell), calib, device=args.device, progress=False)
            allocation = result.details.get("layer_sparsity", {})
            row.update(achieved_sparsity=result.achieved_sparsity, prune_s=time.perf_counter() - t0,
                       layer_n=allocation.get("mixed", {}).get("N"), rates=allocation.get("rates"),
                       continuous_rates=allocation.get("mixed", {}).get("continuous_rates"),
                       owl_lambda_used=allocation.get("lambda"), rmi_delta=allocation.get("delta"),
                       sensitivity_losses=allocation.get("losses"), dense_loss=allocation.get("dense_loss"))
        ppl, _ = prunekit.evaluate(model.to(args.device), sets, device=args.device, bos=bos, progress=False)
        row.update(c4_val_ppl=ppl["c4-val"], wikitext2_test_ppl=ppl["wikitext2"], environment=env)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        owl = "" if cell.get("owl_m") is None else f" M={cell['owl_m']} λ={cell['owl_lambda']}"
        print(f"{cell['pruner'] or 'dense'} {cell['pattern']} {cell['allocation'] or ''}{owl} N={row.get('layer_n')}: "
              f"c4-val {ppl['c4-val']:.2f}, wikitext2 {ppl['wikitext2']:.2f}", flush=True)
        del model


if __name__ == "__main__":
    main()
