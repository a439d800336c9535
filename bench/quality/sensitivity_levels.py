"""More candidate rates per layer for the measured-loss allocation: does the additive model's larger predicted gain
turn into perplexity?

`--layer-sparsity sensitivity` probes each layer at s − λ, s and s + λ. The owl_sweep.py runs at λ = 0.08, 0.12 and
0.16 recorded every probe (`sensitivity_losses`), and the probes are deterministic (the s column is identical in all
three), so together they give each layer's loss at seven rates: s and s ± {0.08, 0.12, 0.16}. This script takes
those recorded probes, solves the same problem as prunekit.allocation.sensitivity over all seven,

    min Σ_l L_l(x_l)  s.t.  Σ_l x_l = 18 s   (x_l on the 0.04 grid; every decoder layer has the same size),

prunes with the chosen rates (`prune_layerwise(..., layer_sparsity=rates)`, the pruner of the recorded runs) and
scores C4 validation and WikiText-2 test as owl_sweep.py does. One JSON line is appended to `--output`.

    PYTHONPATH=src python bench/quality/sensitivity_levels.py --runs bench/results/owl_gemma3_cpu.jsonl \
        --model gemma3-270m --output bench/results/sensitivity_levels_gemma3_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GRID = 0.04  # every recorded rate is s + k·GRID


def recorded_probes(runs: list[dict], model: str, method: str, target: float) -> tuple[list[dict], float]:
    """({rate: L_l(rate)} for each layer, L_dense) from every sensitivity row of (model, method, target)."""
    levels: list[dict] = []
    dense = None
    for run in runs:
        if (run["model"], run["method"], run["sparsity"], run["allocation"]) != (model, method, target, "sensitivity"):
            continue
        dense, lam = run["dense_loss"], run["lambda"]
        for l, row in enumerate(run["sensitivity_losses"]):
            if l == len(levels):
                levels.append({})
            for rate, loss in zip((target + lam, target, target - lam), row):  # allocation.sensitivity.step_rates
                if loss is not None:
                    levels[l][round(rate, 4)] = loss
    if not levels:
        raise SystemExit(f"no sensitivity rows for {model} {method} at {target} in the runs file")
    return levels, dense


def least_loss_rates(levels: list[dict], target: float) -> tuple[list[float], float]:
    """(each layer's rate, Σ_l L_l at those rates) minimising Σ_l L_l(x_l) with Σ_l (x_l − s) = 0,
    by dynamic programming over the running sum of grid steps (all layers one size)."""
    best = {0: (0.0, [])}
    for layer in levels:
        nxt: dict[int, tuple[float, list[float]]] = {}
        for total, (cost, chosen) in best.items():
            for rate, loss in layer.items():
                key, value = total + round((rate - target) / GRID), cost + loss
                if key not in nxt or value < nxt[key][0]:
                    nxt[key] = (value, chosen + [rate])
        best = nxt
    cost, rates = best[0]
    return rates, cost


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="owl_sweep.py output holding the sensitivity rows")
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--method", default="wanda")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--output", required=True)
    args = p.parse_args()
    runs = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line]
    levels, dense_loss = recorded_probes(runs, args.model, args.method, args.sparsity)
    rates, cost = least_loss_rates(levels, args.sparsity)
    uniform = sum(layer[round(args.sparsity, 4)] for layer in levels)
    print(f"{len(levels)} layers, rates {sorted(levels[0])}: predicted gain over uniform {uniform - cost:.3f} nats; "
          f"rates {rates}", flush=True)

    from environment import environment
    from protocol import c4_validation, protocol_q

    import prunekit
    from prunekit.layerwise import prune_layerwise
    from prunekit.methods import config_class
    from prunekit.models.adapters import get_adapter

    model, tokenizer = prunekit.load_model(args.model)
    bos = tokenizer.bos_token_id if get_adapter(model).needs_bos else None
    calib, test = protocol_q(tokenizer, Path(args.data), bos=bos)
    sets = {**c4_validation(tokenizer, Path(args.data), bos=bos), **test}
    config = config_class(args.method)(sparsity=args.sparsity)
    t0 = time.perf_counter()
    result = prune_layerwise(model, config, calib, layer_sparsity=rates, progress=False)
    seconds = time.perf_counter() - t0
    ppl, _ = prunekit.evaluate(model, sets, device="cpu", bos=bos, progress=False)
    row = {"model": args.model, "method": args.method, "sparsity": args.sparsity, "allocation": "sensitivity-7-levels",
           "candidate_rates": sorted(levels[0]), "rates": rates, "predicted_gain_nats": uniform - cost,
           "dense_loss": dense_loss, "c4_val_ppl": ppl["c4-val"], "wikitext2_test_ppl": ppl["wikitext2"],
           "achieved_sparsity": result.achieved_sparsity, "prune_s": seconds, "environment": environment("cpu", "float32")}
    with Path(args.output).open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"c4-val {ppl['c4-val']:.2f}, wikitext2 {ppl['wikitext2']:.2f} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
