"""2:4 sparsity on the GPU: the cuSPARSELt buffer layout, Triton decode tuning, dense vs 2:4 per
linear shape (graphed; the layer picks its fastest path per row count), and end to end on a
random-weight Llama of 7B width. Prints markdown tables last; --out writes everything as JSON (after every
round, so a run cut short keeps what it measured; "complete" says whether it finished).

Every cell is measured --rounds times, interleaved (round 1 of every cell, then round 2, ...; dense then 2:4
back to back within a round): the JSON keeps each round's times, and reports per cell the median and min–max of
the per-round speed-ups (dense times move by 10-20% between runs on the same card, so one run is not a figure).

    PYTHONPATH=src python bench/speed/sparse_gpu.py [--out results.json] [--layers 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # bench/environment.py
from prunekit.eval.speed import compare_linear, measure_model, random_24_linear, weight_mb
from random_models import random_llama  # bench/speed/random_models.py
from prunekit.patterns import keep_n_of_m
from prunekit.sparse import cusparselt_lib, triton_decode
from prunekit.models.adapters import attention_inputs
from prunekit.sparse.linear import PLAN_TIMINGS, PLANS, SparseLinear24, convertible_shapes, sparsify

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]
TOKENS = [1, 16, 128, 2048, 8192]


def probe_layout(out=4096, inp=4096):
    """Whether cuSPARSELt's compressed buffer starts with our packed values (row-major kept weights)."""
    layer = random_24_linear(out, inp)
    sparse = SparseLinear24.from_linear(layer)
    compressed = torch._cslt_compress(layer.weight.data)
    head = compressed.flatten()[: sparse.values.numel()].view_as(sparse.values)
    found = {"compressed_elements": compressed.numel(), "values_elements": sparse.values.numel(),
             "values_prefix_equal": bool(torch.equal(head, sparse.values))}
    lib = cusparselt_lib.load()
    if lib is not None:
        own = cusparselt_lib.Weight24(lib, layer.weight.data).compressed.view(sparse.values.dtype)
        found["newer_library"] = {"compressed_elements": own.numel(), "values_prefix_equal": bool(
            torch.equal(own[: sparse.values.numel()].view_as(sparse.values), sparse.values))}
    return found


#: (split-K, cusparseLtSplitKMode_t) probed: −1 leaves the library's default, 2 = two kernels, 6 = stream-K
SPLIT_K_MODES = [(1, -1), (2, -1), (2, 2), (2, 6), (4, -1), (4, 2), (4, 6)]


def probe_split_k(out=11008, inp=4096, tokens=2048):
    """Whether torch._cslt_sparse_mm accepts each (split-K, mode) (eager, one call each, algorithm 0); the
    error text where it does not. (The layer does not search split-K: every split > 1 was refused here.)"""
    W = random_24_linear(out, inp).weight.data
    compressed = torch._cslt_compress(W)
    xt = torch.randn(tokens, inp, dtype=W.dtype, device=W.device).t()
    ref = (W @ xt).float()
    found = {}
    for split, mode in SPLIT_K_MODES:
        try:
            y = torch._cslt_sparse_mm(compressed, xt, alg_id=0, split_k=split, split_k_mode=mode)
            torch.cuda.synchronize()
            found[f"{split}/{mode}"] = f"ok, rel. err {float((y.float() - ref).norm() / ref.norm()):.1e}"
        except Exception as err:  # noqa: BLE001 - recorded, not hidden
            found[f"{split}/{mode}"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return found


def prune_24_(model) -> None:
    for module in model.model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            W = module.weight.data
            W.masked_fill_(~keep_n_of_m(W.abs().float(), 2, 4), 0.0)


def spread(values: list[float]) -> dict:
    """Median and range of one cell's per-round values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": len(values)}


def linear_cells(rounds: int, t0: float, save) -> list[dict]:
    """Every (shape, tokens, mode) cell measured `rounds` times, the cells interleaved: round 1 of every cell,
    then round 2, ...; within a round each cell times dense then 2:4 back to back (`compare_linear`).
    A cell's dense_ms / sparse_ms are the medians over rounds, its speed-up the median of the per-round
    ratios with their min–max."""
    cells = [(out, inp, tokens, graphed, view) for out, inp in SHAPES for tokens in TOKENS
             for graphed, view in (((True, True), (True, False), (False, True)) if tokens in (16, 2048)
                                   else ((True, True), (True, False)))]
    per_round: dict[tuple, list[dict]] = {cell: [] for cell in cells}
    for k in range(rounds):
        for cell in cells:
            out, inp, tokens, graphed, view = cell
            r = compare_linear(out, inp, tokens, graphed=graphed, view_output=view)
            per_round[cell].append(r)
        print(f"linear round {k + 1}/{rounds} done, {time.time() - t0:.0f}s", flush=True)
        save(partial_rows(per_round))
    return partial_rows(per_round)


def partial_rows(per_round: dict[tuple, list[dict]]) -> list[dict]:
    rows = []
    for (out, inp, tokens, graphed, view), results in per_round.items():
        if not results:
            continue
        key = (out, inp, tokens, torch.float16, True, not view or tokens <= 16)
        ratios = [r["speedup"] for r in results]
        rows.append({**results[-1], "dense_ms": statistics.median(r["dense_ms"] for r in results),
                     "sparse_ms": statistics.median(r["sparse_ms"] for r in results),
                     "speedup": statistics.median(ratios), "speedup_spread": spread(ratios),
                     "dense_ms_rounds": [r["dense_ms"] for r in results],
                     "sparse_ms_rounds": [r["sparse_ms"] for r in results],
                     "rel_err": max(r["rel_err"] for r in results),
                     "path": "/".join(map(str, PLANS.get(key, ("?",)))), "candidates": PLAN_TIMINGS.get(key)})
    return rows


def convertible_by_round(rows: list[dict], view: bool) -> list[list]:
    """What `convertible_shapes` would have decided from each single round (shows how stable the choice is)."""
    chosen = [r for r in rows if r["graphed"] and r["view_output"] == view]
    rounds = min((len(r["dense_ms_rounds"]) for r in chosen), default=0)
    return [sorted(convertible_shapes([{**r, "dense_ms": r["dense_ms_rounds"][k], "sparse_ms": r["sparse_ms_rounds"][k]}
                                       for r in chosen])) for k in range(rounds)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved repeats of every cell (per linear and end to end); medians and min–max reported")
    parser.add_argument("--skip-linear", action="store_true")
    args = parser.parse_args()
    t0 = time.time()
    info = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "triton": triton_decode.triton.__version__,
            "cusparselt": torch.backends.cusparselt.version(), "environment": environment("cuda", "float16"),
            "rounds": args.rounds, "complete": False, "layout": probe_layout()}
    lib = cusparselt_lib.load()  # a newer cuSPARSELt replaces torch's in SparseLinear24 where installed
    info["cusparselt_lib"] = {"path": lib.path, "version": lib.version} if lib else None
    info["dense_fallback"] = SparseLinear24.dense_fallback  # PRUNEKIT_DENSE_FALLBACK=1: a layer may run dense
    print(info, flush=True)

    def save(rows=None):
        if rows is not None:
            info["rows"] = rows
        info["seconds"] = time.time() - t0
        if args.out:
            with open(args.out, "w") as f:
                json.dump(info, f, indent=2)

    info["split_k"] = probe_split_k()
    print("split-K", info["split_k"], flush=True)
    info["tuned"] = {}
    for out, inp in SHAPES:
        sparse = SparseLinear24.from_linear(random_24_linear(out, inp))
        for rows, kernel in ((1, "gemv"), (1, "spmm"), (16, "spmm")):
            best, ms = triton_decode.tune(sparse.values, sparse.meta, rows, kernel=kernel)
            info["tuned"][f"{out}x{inp}/{rows}/{kernel}"] = {**best, "ms": ms}
            print("tuned", out, inp, rows, kernel, best, f"{ms:.4f} ms", f"{time.time() - t0:.0f}s", flush=True)

    rows = [] if args.skip_linear else linear_cells(args.rounds, t0, save)
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "candidates"}), flush=True)
    info["rows"] = rows
    # decided from the per-cell medians of the graphed view-output rows, as before; q/k/v run with contiguous
    # outputs, so the contiguous-output verdict and the single-round verdicts are recorded beside it
    view_rows = [r for r in rows if r["graphed"] and r["view_output"]]
    shapes = convertible_shapes(view_rows) if rows else None
    info["convertible"] = sorted(shapes) if shapes is not None else None
    info["convertible_contiguous"] = (sorted(convertible_shapes([r for r in rows if r["graphed"] and not r["view_output"]]))
                                      if rows else None)
    info["convertible_by_round"] = convertible_by_round(rows, view=True) if rows else None
    save()

    e2e = []
    for contiguous in (True, False):
        for batch, prompt in ((1, 2048), (16, 512)):
            e2e.append({"batch": batch, "prompt_len": prompt, "layers": args.layers, "contiguous_output": contiguous,
                        "dense_rounds": [], "sparse_rounds": [], "replaced_rounds": []})
    info["e2e"] = e2e
    for k in range(args.rounds):  # interleaved: every configuration once per round, dense then 2:4
        for e in e2e:
            model = random_llama(layers=args.layers)
            prune_24_(model)
            dense = measure_model(model, e["batch"], e["prompt_len"])
            dense["weights_mb"] = weight_mb(model)
            e["replaced_rounds"].append(sparsify(model, shapes, None if e["contiguous_output"] else attention_inputs(model)))
            sparse = measure_model(model, e["batch"], e["prompt_len"])
            sparse["weights_mb"] = weight_mb(model)
            e["dense_rounds"].append(dense)
            e["sparse_rounds"].append(sparse)
            del model
            torch.cuda.empty_cache()
        for e in e2e:
            summarize_e2e(e)
        print(f"end-to-end round {k + 1}/{args.rounds} done, {time.time() - t0:.0f}s", flush=True)
        save()
    info["complete"] = True
    save()

    print(f"\n{info['environment']['machine']}, torch {torch.__version__}, cuSPARSELt {info['cusparselt']}"
          f"{', library ' + '.'.join(map(str, lib.version)) if lib else ''}, fp16; {args.rounds} interleaved rounds:"
          " median (min–max) of the per-round speed-ups")
    print("\n| weight (out×in) | tokens | mode | path | dense ms | 2:4 ms | speed-up (min–max) | rel. err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["speedup_spread"]
        print(f"| {r['out']}×{r['in']} | {r['tokens']} | {'graphed' if r['graphed'] else 'eager'}{' view' if r['view_output'] else ''} | {r['path']} "
              f"| {r['dense_ms']:.4f} | {r['sparse_ms']:.4f} | {s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f}) | {r['rel_err']:.1e} |")
    print(f"\nconvertible (medians): {info['convertible']}; per round: {info['convertible_by_round']}; "
          f"contiguous outputs: {info['convertible_contiguous']}")
    print("\n| output | batch × prompt | layers replaced | prefill tok/s dense → 2:4 | prefill speed-up (min–max) "
          "| decode tok/s dense → 2:4 | decode speed-up (min–max) | peak MB prefill | peak MB decode | weights MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in e2e:
        d, s, p, q = e["dense"], e["sparse"], e["prefill_speedup"], e["decode_speedup"]
        print(f"| {'contiguous' if e['contiguous_output'] else 'view'} | {e['batch']}×{e['prompt_len']} | {e['replaced']} "
              f"| {d['prefill_tokens_per_s']:.0f} → {s['prefill_tokens_per_s']:.0f} | {p['median']:.2f}× ({p['min']:.2f}–{p['max']:.2f}) "
              f"| {d['decode_tokens_per_s']:.0f} → {s['decode_tokens_per_s']:.0f} | {q['median']:.2f}× ({q['min']:.2f}–{q['max']:.2f}) "
              f"| {d['prefill_peak_mb']:.0f} → {s['prefill_peak_mb']:.0f} | {d['decode_peak_mb']:.0f} → {s['decode_peak_mb']:.0f} "
              f"| {d['weights_mb']:.0f} → {s['weights_mb']:.0f} |")


def summarize_e2e(e: dict) -> None:
    """Per configuration: medians over rounds of every measured figure ("dense", "sparse"), and the median
    and min–max of the per-round 2:4 / dense throughput ratios."""
    for side in ("dense", "sparse"):
        runs = e[f"{side}_rounds"]
        e[side] = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], float) else runs[-1][k]
                   for k in runs[0]}
    for phase in ("prefill", "decode"):
        e[f"{phase}_speedup"] = spread([s[f"{phase}_tokens_per_s"] / d[f"{phase}_tokens_per_s"]
                                        for d, s in zip(e["dense_rounds"], e["sparse_rounds"])])
    e["replaced"] = e["replaced_rounds"][-1]


if __name__ == "__main__":
    main()
