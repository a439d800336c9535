"""Every method on a random-weight model of a published shape (Llama-3.1-8B, or Llama-3.1-70B's widths with
fewer layers), on one GPU, with the papers' calibration (128 windows × 2048 tokens): wall time, prunekit's own
timings, peak GPU memory (allocated and reserved) and peak host RSS, as each run's report.json gives them.

Each method runs as `prunekit prune` in its own process (clean peaks), bf16 weights, no evaluation (the
weights are random: only time and memory mean anything). Methods that train take a fixed budget (STEPS):
seconds per step are what to project from.

    PYTHONPATH=src python bench/scale/methods.py --shape 8b --layers 4 --calib FILE --output bench/results/x.json
        [--offload auto|none|cpu|disk[,...]] [--steps N] [--methods a,b,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "speed")]
from environment import environment  # noqa: E402  (bench/environment.py)
from random_models import SHAPES, save_random_llama  # noqa: E402  (bench/speed/random_models.py)

#: what each method runs with; training methods get a fixed budget of steps / tokens
STEPS = {
    "magnitude": [], "wanda": [], "sparsegpt": [], "ria": [],
    "fista": [],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "wanda-2:4": ["--method", "wanda", "--pattern", "2:4"],
    "rotpruner": ["--steps", "8", "--train-samples", "8"],
    "rotpruner-keep-layers": ["--method", "rotpruner", "--steps", "8", "--train-samples", "8", "--no-checkpoint-layers"],
    "losa": ["--stages", "2", "--train-tokens", "32768", "--train-seqlen", "2048", "--train-batch-size", "1"],
    "slicegpt": ["--slicing", "0.3"],
    "rotpruner-structured": ["--pattern", "structured", "--slicing", "0.3", "--steps", "8", "--train-samples", "8"],
    "wanda-channels": [],
}


def run_method(name: str, model: Path, args, out: Path, offload: str) -> dict:
    flags = STEPS[name] if "--method" in STEPS[name] else ["--method", name.split("-2:4")[0], *STEPS[name]]
    if args.steps and "--steps" in flags:
        flags = [str(args.steps) if flags[i - 1] == "--steps" else f for i, f in enumerate(flags)]
    if name == "losa":
        flags += ["--train-data", args.calib]
    sparsity = [] if name in ("slicegpt", "rotpruner-structured", "wanda-channels") or "2:4" in name else \
        ["--sparsity", "0.5"]
    command = [sys.executable, "-m", "prunekit", "prune", "--model", str(model), *flags, *sparsity,
               "--calib-data", args.calib, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
               "--dtype", "bfloat16", "--device", args.device, "--eval-data", "none", "--offload", offload,
               "--batch-size", str(args.batch_size), "--output", str(out), "--overwrite", "--quiet"]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    row = {"method": name, "command": " ".join(command[1:]), "wall_s": time.perf_counter() - t0, "rc": done.returncode}
    if done.returncode:
        row["error"] = done.stderr.strip().splitlines()[-3:]
    else:
        report = json.loads((out / "report.json").read_text())
        row.update(timings=report["timings"], peak_memory=report["peak_memory"], offload=report["offload"],
                   achieved_sparsity=report.get("achieved_sparsity"), parameters=report["parameters"])
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({k: row[k] for k in row if k != "command"}), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="8b")
    p.add_argument("--layers", type=int, help="decoder layers (default: the shape's own)")
    p.add_argument("--methods", default=",".join(STEPS))
    p.add_argument("--calib", required=True, help="calibration text/JSONL file")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--offload", default="auto", help="comma-separated: each method runs once per choice")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps of the training methods (0: those in STEPS)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", default="/tmp/scale")
    p.add_argument("--output", required=True)
    args = p.parse_args()
    work = Path(args.workdir)
    model = work / f"llama-{args.shape}-{args.layers or 'all'}"
    t0 = time.perf_counter()
    parameters = save_random_llama(model, args.shape, args.layers, device=args.device)
    build_s = time.perf_counter() - t0
    print(f"built {model}: {parameters / 1e9:.2f} B parameters in {build_s:.0f} s", flush=True)
    result = {"shape": args.shape, "widths": SHAPES[args.shape], "layers": args.layers or SHAPES[args.shape]["layers"],
              "parameters": parameters, "build_s": build_s, "nsamples": args.nsamples, "seqlen": args.seqlen,
              "environment": environment(args.device, "bfloat16"), "runs": []}
    for name in args.methods.split(","):  # rewritten after every run: a run cut short keeps what it measured
        for offload in args.offload.split(","):
            result["runs"].append(run_method(name, model, args, work / f"out-{name}", offload))
            Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
