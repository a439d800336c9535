"""Speed of SliceGPT's sliced shapes at 7B width, where decode reads weights instead of waiting on launches.

A random-weight Llama of Llama-2-7B's width (hidden 4096, MLP 11008, 32 heads, vocab 32000, untied head,
`--layers` decoder layers) is measured dense, dense with the sliced model's one-kernel norm (control), and
restructured to each slicing fraction (prunekit.methods.slicegpt.layers.restructure: the shapes SliceGPT
gives, k × k shortcuts included, head and embeddings sliced as in the paper's untied layout). Speed
depends only on the shapes, so the weights are random. fp16; prefill and every decode step replay a CUDA
graph (prunekit.eval.speed.measure_model through bench/slicegpt_speed.measure). `--shared-layer-basis`
adds, per fraction, the shapes of one basis per layer (one k × k shortcut per layer instead of two).

    PYTHONPATH=src python bench/speed/sliced_width_speed.py [--layers 4] [--slicings 0.2,0.3] [--shared-layer-basis]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

import torch  # noqa: E402

from environment import environment  # noqa: E402  (bench/environment.py)
from random_models import random_llama  # noqa: E402  (bench/speed/random_models.py)
from prunekit.methods.slicegpt.layers import parameter_count, restructure  # noqa: E402
from prunekit.methods.slicegpt.pca import sliced_width  # noqa: E402
from slicegpt_speed import fuse_norms, measure  # noqa: E402


def build(layers: int, slicing: float | None, fused: bool = False, shared: bool = False):
    torch.manual_seed(0)
    model = random_llama(layers=layers, device="cuda")
    if slicing is not None:
        k = sliced_width(model.config.hidden_size, slicing, round_to=8)
        restructure(model, [k] * (2 * layers + 1), tied=False, shared=shared)
        model.to("cuda")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02)
    if fused:
        fuse_norms(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--slicings", default="0.2,0.3")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--shared-layer-basis", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    batches = [int(b) for b in args.batches.split(",")]
    slicings = [float(s) for s in args.slicings.split(",")]
    cells = [("dense", None, False, False), ("dense, fused norm", None, True, False)] + \
        [(f"sliced {s:.0%}", s, False, False) for s in slicings] + \
        [(f"sliced {s:.0%}, shared basis", s, False, True) for s in slicings if args.shared_layer_basis]
    rows = []
    for name, slicing, fused, shared in cells:
        model = build(args.layers, slicing, fused, shared)
        row = {"model": name, "slicing": slicing, "shared_layer_basis": shared, "parameters": parameter_count(model),
               **measure(model, "cuda", batches, args.prompt_len, args.gen_len, repeats=5)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
              "dtype": "float16", "environment": environment("cuda", "float16"), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))

    dense = {r["batch"]: r for r in rows[0]["rows"]}
    print(f"\n{result['gpu']}, 7B width, {args.layers} layers, fp16, prompt {args.prompt_len}, {args.gen_len} decode steps")
    print("| model | parameters (M) | " + " | ".join(f"b{b} prefill tok/s | b{b} decode tok/s" for b in batches)
          + " | peak MB |")
    print("|---|---:|" + "---:|---:|" * len(batches) + "---:|")
    for r in rows:
        cols = []
        for s in r["rows"]:
            d = dense[s["batch"]]
            for phase in ("prefill", "decode"):
                v = s[f"{phase}_tokens_per_s"]
                cols.append(f"{v:,.0f} ({v / d[f'{phase}_tokens_per_s']:.2f}×)")
        print(f"| {r['model']} | {r['parameters'] / 1e6:.1f} | " + " | ".join(cols)
              + f" | {r['memory']['peak_bytes'] / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
