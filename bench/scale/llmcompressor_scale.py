"""prunekit and llm-compressor 0.14 side by side at scale: time and peak memory of pruning one bf16 Llama.

Both sides prune the same model directory with exactly the same calibration token ids: the parent draws the
windows once with prunekit's own `calibration` (seed 0 by default) and saves them for the workers. Each
(method, pattern, round, side) runs in a fresh Python process, so its peak GPU memory and host RSS are its own;
the side that goes first alternates between rounds. A worker loads the model onto the CPU in bf16 with
transformers (timed apart), then prunes it:

* prunekit: `prunekit.prune(model, config, calib, device=--device, batch_size=--batch-size)`;
* llm-compressor: `prune_with_llmcompressor` (bench/quality/llmcompressor_side.py: oneshot, sequential pipeline,
  batch size 1, decoder linears only). It picks the accelerator itself, so with `--device cpu` the workers
  see no GPU (CUDA_VISIBLE_DEVICES="").

A worker reports the wall time of the pruning call (for llm-compressor also of `oneshot` alone, without
building its Dataset), the peak GPU memory allocated and reserved during that call, the process's peak host
RSS (after loading, and at the end: load and pruning together) and the sparsity of the decoder layers' linears;
for prunekit also its own split of the seconds (`prunekit_timings`: calibration passes, pruning).
The JSON holds every row, the environment and the ratios llm-compressor / prunekit (medians over rounds).

    PYTHONPATH=src python bench/scale/llmcompressor_scale.py --model DIR --calib FILE [--nsamples 128]
        [--seqlen 2048] [--methods sparsegpt,wanda] [--patterns 0.5,2:4] [--rounds 1] [--batch-size 8]
        [--device cuda] [--seed 0] [--output results.json]

`--patterns`: a fraction is that much unstructured sparsity, N:M is that pattern (2:4 prunes 0.5).
The JSON is rewritten after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH / "quality")]  # environment; llmcompressor_side

import torch  # noqa: E402

SIDES = ("prunekit", "llmcompressor")
MARK = "ROW "  # prefix of the worker's result line: llm-compressor logs to stdout too. Not silenced with
#               LLM_COMPRESSOR_LOG_DISABLED=true: in 0.14 that leaves its METRIC level unregistered, and
#               SparseGPT/Wanda then fail with "Level 'METRIC' does not exist"
GiB = 2**30


def parse_pattern(text: str) -> tuple[float, str]:
    """'0.5' -> (0.5, 'unstructured'); '2:4' -> (0.5, '2:4')."""
    if ":" in text:
        n, m = map(int, text.split(":"))
        return 1 - n / m, text
    return float(text), "unstructured"


def host_peak_gib() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss alone: Linux carries the high-water mark
    across fork and exec, so a worker's ru_maxrss starts at the parent's RSS (≈1 GiB with the tokenizer)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024 / GiB


def ru_maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # KiB on Linux


def decoder_sparsity(model) -> float:
    """Fraction of zeros over every Linear inside the decoder layers (what both sides prune)."""
    from prunekit import get_adapter

    weights = [m.weight for layer in get_adapter(model).layers() for m in layer.modules()
               if isinstance(m, torch.nn.Linear)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def worker(args) -> dict:
    """Load, prune with one side, measure; the row the parent collects."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    import prunekit
    from environment import environment
    from prunekit.methods import config_class

    if args.worker == "llmcompressor":  # imported ahead, so that no import is timed
        import llmcompressor  # noqa: F401
        from llmcompressor_side import prune_with_llmcompressor

    sparsity, pattern = parse_pattern(args.pattern)
    cuda = torch.device(args.device).type == "cuda"
    calib = torch.load(args.calib_ids)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(args.model))]  # imports the model's code
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    row = {"side": args.worker, "method": args.method, "pattern": args.pattern, "load_s": load_s,
           "host_peak_after_load_gib": host_peak_gib()}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.worker == "prunekit":
        config = config_class(args.method)(sparsity=sparsity, pattern=pattern)
        pruned = prunekit.prune(model, config, calib, device=args.device, batch_size=args.batch_size, progress=False)
        row["prunekit_timings"] = dict(pruned.timings)  # calibration passes vs pruning, as report.json gives them
    else:
        out = prune_with_llmcompressor(model, calib, args.method, sparsity, pattern)
        row |= {"oneshot_s": out["seconds"], "llmcompressor_settings": out["settings"]}
    if cuda:
        torch.cuda.synchronize()
    row["prune_s"] = time.perf_counter() - t0
    if cuda:
        row |= {"gpu_peak_allocated_gib": torch.cuda.max_memory_allocated() / GiB,
                "gpu_peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB}
    return row | {"host_peak_gib": host_peak_gib(), "ru_maxrss_gib": ru_maxrss_gib(),
                  "sparsity": decoder_sparsity(model), "environment": environment(args.device, "bfloat16")}


def run_worker(args, side: str, method: str, pattern: str, calib_ids: Path) -> dict:
    """One side in a fresh process: its row, or the error it died with."""
    cmd = [sys.executable, __file__, "--worker", side, "--model", args.model, "--calib-ids", str(calib_ids),
           "--method", method, "--pattern", pattern, "--device", args.device, "--batch-size", str(args.batch_size)]
    env = os.environ | ({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rows = [line[len(MARK):] for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not rows:
        return {"side": side, "method": method, "pattern": pattern,
                "error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    return json.loads(rows[-1])


def ratios(rows: list[dict]) -> list[dict]:
    """llm-compressor / prunekit per (method, pattern): medians over rounds of each measure."""
    keys = ("prune_s", "gpu_peak_allocated_gib", "gpu_peak_reserved_gib", "host_peak_gib")
    out = []
    for method, pattern in dict.fromkeys((r["method"], r["pattern"]) for r in rows):
        cell = [r for r in rows if (r["method"], r["pattern"]) == (method, pattern) and "error" not in r]
        ratio = {"method": method, "pattern": pattern}
        for key in keys:
            values = {side: [r[key] for r in cell if r["side"] == side and key in r] for side in SIDES}
            if all(values.values()):
                ratio[key] = statistics.median(values["llmcompressor"]) / statistics.median(values["prunekit"])
        out.append(ratio)
    return out


def package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def table(rows: list[dict], ratio: list[dict]) -> str:
    lines = ["| method | pattern | side | load s | prune s | GPU alloc GiB | GPU reserved GiB | host GiB | sparsity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['pattern']} | {r['side']} | failed: {r['error'].splitlines()[-1]} |")
            continue
        gpu = [f"{r[k]:.2f}" if k in r else "—" for k in ("gpu_peak_allocated_gib", "gpu_peak_reserved_gib")]
        lines.append(f"| {r['method']} | {r['pattern']} | {r['side']} | {r['load_s']:.1f} | {r['prune_s']:.1f} "
                     f"| {gpu[0]} | {gpu[1]} | {r['host_peak_gib']:.2f} | {r['sparsity']:.4f} |")
    cells = [f"{q['method']} {q['pattern']}: " + ", ".join(f"{k} {v:.2f}×" for k, v in list(q.items())[2:])
             for q in ratio if len(q) > 2]
    lines += ["", "llm-compressor / prunekit: " + ("; ".join(cells) or "—")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face Llama directory (safetensors, tokenizer)")
    parser.add_argument("--calib", help="calibration text or JSONL file (or a prunekit data name)")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="sparsegpt,wanda")
    parser.add_argument("--patterns", default="0.5,2:4")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="prunekit's (llm-compressor runs batch size 1)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", help="write the JSON here")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)  # internal: one side, one process
    parser.add_argument("--calib-ids", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--pattern", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(MARK + json.dumps(worker(args)), flush=True)
        return
    if not args.calib:
        parser.error("--calib is required")

    from transformers import AutoTokenizer

    from prunekit import calibration

    calib, text = calibration(AutoTokenizer.from_pretrained(args.model), args.calib, args.nsamples, args.seqlen,
                              args.seed)
    result = {"environment": None, "packages": {name: package(name) for name in (
                  "prunekit", "llmcompressor", "compressed-tensors", "transformers", "accelerate", "datasets")},
              "settings": {"model": args.model, "calibration": text.source, "windows": list(calib.shape),
                           "seed": args.seed, "batch_size": args.batch_size, "device": args.device,
                           "rounds": args.rounds, "command": sys.argv},
              "rows": [], "ratios": []}
    with tempfile.TemporaryDirectory() as tmp:
        calib_ids = Path(tmp) / "calib.pt"
        torch.save(calib, calib_ids)
        for method in args.methods.split(","):
            for pattern in args.patterns.split(","):
                for r in range(args.rounds):
                    for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                        row = run_worker(args, side, method, pattern, calib_ids) | {"round": r}
                        env = row.pop("environment", None)
                        result["environment"] = result["environment"] or env
                        result["rows"].append(row)
                        result["ratios"] = ratios(result["rows"])
                        print(json.dumps({k: v for k, v in row.items() if k != "llmcompressor_settings"}), flush=True)
                        if args.output:
                            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["rows"], result["ratios"]))


if __name__ == "__main__":
    main()
