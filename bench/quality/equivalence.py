"""Bit-for-bit equivalence of two revisions of prunekit: run every method on a tiny random Llama and save
all weights, then compare two such files. For refactors that must not change any number.

    git worktree add /tmp/before <commit>
    (cd /tmp/before && PYTHONPATH=src python /path/to/bench/quality/equivalence.py run before.pt)
    PYTHONPATH=src python bench/quality/equivalence.py run after.pt
    python bench/quality/equivalence.py compare before.pt after.pt      # one line per case: IDENTICAL or what differs

Uses only the public API (prunekit.prune and the config classes), so an older revision runs it too.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def cases(text: str) -> dict:
    from prunekit import (FistaConfig, LosaConfig, MagnitudeConfig, RotPrunerConfig, RotPrunerStructuredConfig,
                          SliceGPTConfig, SparseGPTConfig, WandaConfig)

    rot = dict(steps=6, lr=0.05, train_samples=4)
    losa = dict(stages=2, train_data=text, train_tokens=128, train_seqlen=32, train_batch_size=2, rank=2,
                rmi_tokens=32, feature_windows=2)
    return {
        "wanda 50%": lambda: WandaConfig(0.5), "wanda 2:4": lambda: WandaConfig(pattern="2:4"),
        "magnitude 50%": lambda: MagnitudeConfig(0.5),
        "sparsegpt 50%": lambda: SparseGPTConfig(0.5, blocksize=16),
        "sparsegpt 2:4": lambda: SparseGPTConfig(pattern="2:4", blocksize=16),
        "fista 50%": lambda: FistaConfig(0.5, lam_steps=3, iters=5),
        "fista intra+inter 50%": lambda: FistaConfig(0.5, error_correction="intra+inter", lam_steps=2, iters=4),
        "fista none 2:4": lambda: FistaConfig(pattern="2:4", error_correction="none", lam_steps=2, iters=4),
        "rotpruner wanda 50%": lambda: RotPrunerConfig(0.5, base_pruner="wanda", **rot),
        "rotpruner wanda 2:4": lambda: RotPrunerConfig(pattern="2:4", base_pruner="wanda", **rot),
        "rotpruner sparsegpt-noupdate 50%": lambda: RotPrunerConfig(0.5, base_pruner="sparsegpt-noupdate",
                                                                    blocksize=16, **rot),
        "rotpruner sparsegpt-noupdate 2:4": lambda: RotPrunerConfig(pattern="2:4", base_pruner="sparsegpt-noupdate",
                                                                    blocksize=16, **rot),
        "rotpruner sparsegpt 50%": lambda: RotPrunerConfig(0.5, base_pruner="sparsegpt", blocksize=16, **rot),
        "rotpruner magnitude 2:4": lambda: RotPrunerConfig(pattern="2:4", base_pruner="magnitude", **rot),
        "losa wanda 50%": lambda: LosaConfig(0.5, **losa),
        "losa sparsegpt 50%": lambda: LosaConfig(0.5, base_pruner="sparsegpt", **losa),
        "slicegpt 25%": lambda: SliceGPTConfig(slicing=0.25),
        "slicegpt 25% shared basis": lambda: SliceGPTConfig(slicing=0.25, shared_layer_basis=True),
        "rotpruner-structured 25%": lambda: RotPrunerStructuredConfig(slicing=0.25, steps=3),
    }


def run(path: str) -> None:
    from conftest import TEXT, byte_tokenizer, random_windows, tiny_llama
    from prunekit import prune

    text = Path(tempfile.mkdtemp()) / "text.txt"
    text.write_text(TEXT)
    out = {}
    for name, make in cases(str(text)).items():
        torch.manual_seed(0)
        model = tiny_llama(layers=3)
        prune(model, make(), random_windows(8, 32), progress=False, tokenizer=byte_tokenizer())
        out[name] = {k: v.clone() for k, v in model.state_dict().items()}
        print(name, flush=True)
    torch.save(out, path)


def compare(a_path: str, b_path: str) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    differ = 0
    for name in a:
        if name not in b:
            print(f"{name}: missing from {b_path}")
            differ += 1
            continue
        bad = [k for k in a[name] if k not in b[name] or not torch.equal(a[name][k], b[name][k])]
        bad += [k for k in b[name] if k not in a[name]]
        print(f"{name}: " + ("IDENTICAL" if not bad else f"{len(bad)} tensors differ, first {bad[0]}"))
        differ += bool(bad)
    print(f"{len(a) - differ} of {len(a)} cases bit-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
