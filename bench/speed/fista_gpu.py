"""FISTAPruner speed on one accelerator: single operators, and optionally a whole model vs SparseGPT.

Operators: one 4096×4096 and one 11008×4096 (out × in) linear with random weights, fed 128×2048
calibration tokens (random correlated inputs with uneven feature scales, generated in chunks on the
device). For each: the time to accumulate the statistics (G, or SparseGPT's H), and the time of
`prune` for fista (default options, and --fista-options) and sparsegpt, at 50% unstructured and 2:4.

With --model (an embedded name or a model directory, e.g. smollm2-135m): whole-model pruning time
of fista vs sparsegpt with protocol Q's calibration (--data: the shared data folder) on --device.

    python bench/speed/fista_gpu.py [--device cuda] [--model smollm2-135m] [--sizes 4096x4096,11008x4096]
                              [--tokens 262144] [--patterns unstructured,2:4] [--json gpu.json]
On CPU with tiny sizes (a smoke test):
    python bench/speed/fista_gpu.py --device cpu --sizes 96x64,160x64 --tokens 2048
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

from prunekit import FistaConfig, SparseGPTConfig, load_model, prune  # noqa: E402

from environment import environment  # noqa: E402  (bench/environment.py)


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def feed(pruner, in_features: int, tokens: int, device, chunk: int = 8192, seed: int = 0) -> None:
    """`tokens` random inputs x = (z · mixing) ⊙ scales, chunk by chunk, into pruner.add_batch."""
    g = torch.Generator(device=device).manual_seed(seed)
    mixing = torch.randn(in_features, in_features, generator=g, device=device) / in_features**0.5
    scales = torch.logspace(-1, 1, in_features, device=device)
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        pruner.add_batch((torch.randn(n, in_features, generator=g, device=device) @ mixing) * scales)


def operator_rows(sizes, tokens: int, device, fista_options: dict) -> list[dict]:
    rows = []
    for out_f, in_f in sizes:
        W = torch.randn(out_f, in_f, device=device) / in_f**0.5
        for pattern in ("unstructured", "2:4"):
            for name, config in (("sparsegpt", SparseGPTConfig(0.5, pattern)),
                                 ("fista", FistaConfig(0.5, pattern, **fista_options))):
                pruner = config.make_pruner(in_f, device)
                _, stats_s = timed(lambda: feed(pruner, in_f, tokens, device), device)
                pruned, prune_s = timed(lambda: pruner.prune(W.clone()).weight, device)
                delta = (W - pruned)
                # relative error on the statistics both pruners share: tr(Δ G Δᵀ) / tr(W G Wᵀ)
                G = pruner.G if name == "fista" else pruner.H
                error = float(((delta @ G) * delta).sum() / ((W @ G) * W).sum())
                rows.append({"operator": f"{out_f}x{in_f}", "pattern": pattern, "method": name,
                             "statistics_s": stats_s, "prune_s": prune_s, "rel_error": error,
                             "sparsity": float((pruned == 0).float().mean())})
                print(json.dumps(rows[-1]), flush=True)
                del pruner, pruned
    return rows


def model_rows(model_name: str, data: Path, device, fista_options: dict, patterns=("unstructured", "2:4"),
               nsamples: int = 128) -> list[dict]:
    from protocol import protocol_q

    dense, tokenizer = load_model(model_name)
    calib, _ = protocol_q(tokenizer, data)
    calib = calib[:nsamples]
    rows = []
    for pattern in patterns:
        for name, config in (("sparsegpt", SparseGPTConfig(0.5, pattern)),
                             ("fista", FistaConfig(0.5, pattern, **fista_options))):
            model = copy.deepcopy(dense)
            result, seconds = timed(lambda: prune(model, config, calib, device=device, progress=False), device)
            rows.append({"operator": model_name, "pattern": pattern, "method": name, "prune_s": seconds,
                         "statistics_s": result.timings["calibration"], "solver_s": result.timings["pruning"]})
            print(json.dumps(rows[-1]), flush=True)
            del model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="4096x4096,11008x4096", help="out×in of each operator")
    parser.add_argument("--tokens", type=int, default=128 * 2048, help="calibration tokens per operator")
    parser.add_argument("--model", help="also time the whole model (e.g. smollm2-135m)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--patterns", default="unstructured,2:4", help="patterns of the whole-model timing")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows of the whole-model timing")
    parser.add_argument("--fista-options", default="{}", help='JSON of FistaConfig fields, e.g. \'{"iters": 20}\'')
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    fista_options = json.loads(args.fista_options)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as on CPU: timings of the fp32 algorithm

    rows = operator_rows(sizes, args.tokens, args.device, fista_options)
    if args.model:
        rows += model_rows(args.model, Path(args.data), args.device, fista_options, args.patterns.split(","),
                           args.nsamples)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(args.device, "float32"), "rows": rows}, indent=2))

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{device}, torch {torch.__version__}, {args.tokens} calibration tokens per operator, "
          f"fista options {fista_options or 'default'}\n")
    print("| operator | pattern | method | statistics s | prune s | fista / sparsegpt | rel. error |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["operator"] == row["operator"] and r["pattern"] == row["pattern"]
                    and r["method"] == "sparsegpt")
        ratio = f"{row['prune_s'] / base['prune_s']:.1f}×" if row["method"] == "fista" else ""
        error = f"{row['rel_error']:.4f}" if "rel_error" in row else ""
        print(f"| {row['operator']} | {row['pattern']} | {row['method']} | {row['statistics_s']:.2f} "
              f"| {row['prune_s']:.2f} | {ratio} | {error} |")


if __name__ == "__main__":
    main()
