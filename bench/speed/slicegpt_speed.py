"""Prefill and decode speed and peak memory of one model (dense or sliced), batch by batch.

    python bench/speed/slicegpt_speed.py --model smollm2-135m            [--device cpu] [--batches 1,16]
    python bench/speed/slicegpt_speed.py --model /tmp/slice20            [--prompt-len 256 --gen-len 32 --json out.json]

Prefill: one forward pass over `batch × prompt_len` random tokens (tokens/s = batch·prompt_len / time).
Decode: `gen_len` single-token steps against a static KV cache holding the prompt (tokens/s = batch / step
time). Prefill: median of `--repeats` runs; decode: median of max(2, repeats // 2) runs of `gen_len` steps
(prunekit.eval.speed.measure_model); on CUDA every call replays a CUDA graph (captured after two warm-up
calls), on the CPU the calls run eagerly without a separate warm-up.
Peak memory: CUDA max_memory_allocated less what the process held on the GPU before the model
moved there (prefill_peak_mb, decode_peak_mb), or on the CPU the
process's peak RSS (so run one model per process to compare). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment, protocol, flags

from environment import environment  # noqa: E402  (bench/environment.py)
from prunekit import load_model  # noqa: E402
from prunekit.eval.speed import measure_model  # noqa: E402
from prunekit.methods.slicegpt import fused_norm  # noqa: E402


def peak_memory(device: str) -> dict:
    if device.startswith("cuda"):
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "kind": "cuda max_memory_allocated"}
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "process peak RSS"}


class FusedRMSNorm(torch.nn.Module):
    """Control for the speed comparison: a dense RMSNorm (weight · x / rms(x)) run by the sliced model's
    one-kernel norm on CUDA (prunekit.methods.slicegpt.fused_norm), instead of transformers' ~8
    elementwise ops; elsewhere `F.rms_norm` (same function)."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and fused_norm.available():
            return fused_norm.rms_norm(x, x.shape[-1], self.eps, self.weight)
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def fuse_norms(model) -> int:
    """Swap every Llama-style RMSNorm of a dense model for FusedRMSNorm, in place; returns how many."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__ in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"):
                setattr(module, name, FusedRMSNorm(child))
                swapped += 1
    if not swapped:
        raise ValueError(f"no RMSNorm of a known class in {type(model).__name__}: the fused-norm control would "
                         "measure the dense model again")
    return swapped


def measure(model, device: str, batches, prompt_len: int, gen_len: int, repeats: int) -> dict:
    """prunekit.eval.speed.measure_model at each batch size: on CUDA prefill and each decode step replay a
    CUDA graph (a static KV cache), as a serving loop would; on the CPU they run eagerly."""
    other = 0.0
    if device.startswith("cuda"):  # what else the process holds on the GPU is not this model's memory
        model.to("cpu")
        gc.collect()
        torch.cuda.empty_cache()
        other = torch.cuda.memory_allocated() / 2**20
    model.to(device).eval()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = [measure_model(model, b, prompt_len, gen_len, repeats=max(2, repeats)) for b in batches]
    for row in rows:
        for key in ("prefill_peak_mb", "decode_peak_mb"):
            if key in row:
                row[key] -= other
    params = sum(p.numel() for p in model.parameters())
    memory = peak_memory(device) if not device.startswith("cuda") else \
        {"peak_bytes": int(max(max(r["prefill_peak_mb"], r["decode_peak_mb"]) for r in rows) * 2**20),
         "kind": "cuda max_memory_allocated over all batches, less what the process held before"}
    return {"parameters": params, "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "rows": rows, "memory": memory, "prompt_len": prompt_len, "gen_len": gen_len,
            "threads": torch.get_num_threads(), "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, model directory (sliced too) or .gguf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fused-norms", action="store_true",
                        help="control: run a dense model's RMSNorms as one fused kernel, as the sliced model does")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    model, _ = load_model(args.model, args.dtype, args.device)
    fused = fuse_norms(model) if args.fused_norms else 0
    result = {"model": args.model, "dtype": args.dtype, "fused_norms": fused,
              **measure(model, args.device, [int(b) for b in args.batches.split(",")], args.prompt_len, args.gen_len,
                        args.repeats), "environment": environment(args.device, args.dtype)}
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
