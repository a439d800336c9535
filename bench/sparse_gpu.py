"""2:4 sparsity on the GPU: the cuSPARSELt buffer layout, Triton decode tuning, dense vs 2:4 per
linear shape (graphed; the layer picks its fastest path per row count), and end to end on a
random-weight Llama of 7B width. Prints markdown tables last; --out writes everything as JSON.

    PYTHONPATH=src python bench/sparse_gpu.py [--out results.json] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prunekit.eval.speed import compare_linear, measure_model, random_24_linear, random_llama
from prunekit.patterns import keep_n_of_m
from prunekit.sparse import cusparselt_lib, triton_decode
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


def weight_mb(model) -> float:
    """Bytes held by the model's parameters and buffers (shared storage counted once), in MiB."""
    storages = {}
    for t in list(model.parameters()) + list(model.buffers()):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    for m in model.modules():
        if isinstance(m, SparseLinear24) and m._compressed is not None:
            storages[m._compressed.untyped_storage().data_ptr()] = m._compressed.untyped_storage().nbytes()
    return sum(storages.values()) / 2**20


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--skip-linear", action="store_true")
    args = parser.parse_args()
    t0 = time.time()
    info = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "triton": triton_decode.triton.__version__,
            "cusparselt": torch.backends.cusparselt.version(), "layout": probe_layout()}
    lib = cusparselt_lib.load()  # a newer cuSPARSELt replaces torch's in SparseLinear24 where installed
    info["cusparselt_lib"] = {"path": lib.path, "version": lib.version} if lib else None
    print(info, flush=True)

    info["split_k"] = probe_split_k()
    print("split-K", info["split_k"], flush=True)
    info["tuned"] = {}
    for out, inp in SHAPES:
        sparse = SparseLinear24.from_linear(random_24_linear(out, inp))
        for rows, kernel in ((1, "gemv"), (1, "spmm"), (16, "spmm")):
            best, ms = triton_decode.tune(sparse.values, sparse.meta, rows, kernel=kernel)
            info["tuned"][f"{out}x{inp}/{rows}/{kernel}"] = {**best, "ms": ms}
            print("tuned", out, inp, rows, kernel, best, f"{ms:.4f} ms", f"{time.time() - t0:.0f}s", flush=True)

    rows = []
    if not args.skip_linear:
        for out, inp in SHAPES:
            for tokens in TOKENS:
                for graphed, view in ((True, True), (True, False), (False, True)) if tokens in (16, 2048) else ((True, True), (True, False)):
                    r = compare_linear(out, inp, tokens, graphed=graphed, view_output=view)
                    key = (out, inp, tokens, torch.float16, True, not view or tokens <= 16)
                    r["path"] = "/".join(map(str, PLANS.get(key, ("?",))))
                    r["candidates"] = PLAN_TIMINGS.get(key)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    info["rows"] = rows
    shapes = convertible_shapes([r for r in rows if r["graphed"] and r["view_output"]]) if rows else None
    info["convertible"] = sorted(shapes) if shapes is not None else None

    e2e = []
    for contiguous in (True, False):
        for batch, prompt in ((1, 2048), (16, 512)):
            model = random_llama(layers=args.layers)
            prune_24_(model)
            dense = measure_model(model, batch, prompt)
            dense["weights_mb"] = weight_mb(model)
            replaced = sparsify(model, shapes, view_outputs=not contiguous)
            sparse = measure_model(model, batch, prompt)
            sparse["weights_mb"] = weight_mb(model)
            e2e.append({"batch": batch, "prompt_len": prompt, "layers": args.layers, "replaced": replaced,
                        "contiguous_output": contiguous, "dense": dense, "sparse": sparse})
            print(json.dumps(e2e[-1]), flush=True)
            del model
            torch.cuda.empty_cache()
    info["e2e"] = e2e
    info["seconds"] = time.time() - t0
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)

    print("\n| weight (out×in) | tokens | mode | path | dense ms | 2:4 ms | speed-up | rel. err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['out']}×{r['in']} | {r['tokens']} | {'graphed' if r['graphed'] else 'eager'}{' view' if r['view_output'] else ''} | {r['path']} "
              f"| {r['dense_ms']:.4f} | {r['sparse_ms']:.4f} | {r['speedup']:.2f}× | {r['rel_err']:.1e} |")
    print("\n| output | batch × prompt | layers replaced | prefill tok/s dense → 2:4 | decode tok/s dense → 2:4 | peak MB prefill | peak MB decode | weights MB |")
    print("|---|---|---|---|---|---|---|---|")
    for e in e2e:
        d, s = e["dense"], e["sparse"]
        print(f"| {'contiguous' if e['contiguous_output'] else 'view'} | {e['batch']}×{e['prompt_len']} | {e['replaced']} | {d['prefill_tokens_per_s']:.0f} → {s['prefill_tokens_per_s']:.0f}"
              f" ({s['prefill_tokens_per_s'] / d['prefill_tokens_per_s']:.2f}×) | {d['decode_tokens_per_s']:.0f} → "
              f"{s['decode_tokens_per_s']:.0f} ({s['decode_tokens_per_s'] / d['decode_tokens_per_s']:.2f}×) "
              f"| {d['prefill_peak_mb']:.0f} → {s['prefill_peak_mb']:.0f} | {d['decode_peak_mb']:.0f} → {s['decode_peak_mb']:.0f} "
              f"| {d['weights_mb']:.0f} → {s['weights_mb']:.0f} |")


if __name__ == "__main__":
    main()
