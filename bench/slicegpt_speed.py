"""Prefill and decode speed and peak memory of one model (dense or sliced), batch by batch.

    python bench/slicegpt_speed.py --model smollm2-135m            [--device cpu] [--batches 1,16]
    python bench/slicegpt_speed.py --model /tmp/slice20            [--prompt-len 256 --gen-len 32 --json out.json]

Prefill: one forward pass over `batch × prompt_len` random tokens (tokens/s = batch·prompt_len / time).
Decode: `gen_len` single-token steps with the KV cache after that prefill (tokens/s = batch·gen_len / time).
Median of `--repeats` runs after one warm-up. Peak memory: CUDA max_memory_allocated, or on the CPU the
process's peak RSS (so run one model per process to compare). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from prunekit import load_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def speed(model, batch: int, prompt_len: int, gen_len: int, device: str, repeats: int = 3) -> dict:
    """{prefill_tokens_per_s, decode_tokens_per_s} (medians) for one batch size."""
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    prefill, decode = [], []
    for r in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        _sync(device)
        t1 = time.perf_counter()
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(gen_len):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(device)
        t2 = time.perf_counter()
        if r:  # the first run warms up
            prefill.append(batch * prompt_len / (t1 - t0))
            decode.append(batch * gen_len / (t2 - t1))
    return {"batch": batch, "prefill_tokens_per_s": statistics.median(prefill),
            "decode_tokens_per_s": statistics.median(decode)}


def peak_memory(device: str) -> dict:
    if device.startswith("cuda"):
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "kind": "cuda max_memory_allocated"}
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "process peak RSS"}


def measure(model, device: str, batches, prompt_len: int, gen_len: int, repeats: int) -> dict:
    model.to(device).eval()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = [speed(model, b, prompt_len, gen_len, device, repeats) for b in batches]
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "rows": rows, "memory": peak_memory(device), "prompt_len": prompt_len, "gen_len": gen_len,
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
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    model, _ = load_model(args.model, args.dtype, args.device)
    result = {"model": args.model, "dtype": args.dtype,
              **measure(model, args.device, [int(b) for b in args.batches.split(",")], args.prompt_len, args.gen_len,
                        args.repeats)}
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
