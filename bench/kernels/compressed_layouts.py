"""Which two values each 2:4 compressor stores for a group of four with fewer than two non-zeros, against
prunekit.sparse.packing.pack_24: a layer holds its weight once only where the compressor's kept values are its own
packed values byte for byte (SparseLinear24's cuSPARSELt head, cutlass_lib.Weight24FP8.share_values).

Compressors: torch's cuSPARSELt (`torch._cslt_compress`) in bf16 and in FP8, and CUTLASS's sm_90 FP8 compressor
(PRUNEKIT_CUTLASS). Every pattern of zero and non-zero positions in a group is written into the first group of one
row of a random 2:4 weight; the row's first two stored values are read back. Also, for random 2:4 weights of the
8B shapes, whether each compressor's values equal pack_24's.

    PRUNEKIT_CUTLASS=.cutlass/libsm90_24_fp8.so PYTHONPATH=src python bench/kernels/compressed_layouts.py --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: environment
from environment import environment  # bench/environment.py
from prunekit.quantize.fp8 import quantize_fp8
from prunekit.sparse import cutlass_lib
from prunekit.sparse.packing import pack_24

#: non-zero positions of a group: none, one, or two of four
PATTERNS = [()] + [(p,) for p in range(4)] + list(itertools.combinations(range(4), 2))


def crafted(dtype: torch.dtype, rows: int = 128, cols: int = 256) -> torch.Tensor:
    """A random 2:4 weight whose row r starts with PATTERNS[r] (values 3 then 5 at the non-zero positions)."""
    w = torch.randn(rows, cols, device="cuda")
    keep = w.abs().view(rows, -1, 4).topk(2, dim=2).indices
    mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool, device="cuda").scatter_(2, keep, True).view(rows, cols)
    w = (w * mask + 0.0).to(dtype)
    for r, pattern in enumerate(PATTERNS):
        w[r, :4] = 0
        for value, pos in zip((3.0, 5.0), pattern):
            w[r, pos] = value
    return w


def heads(values: torch.Tensor) -> list[list[float]]:
    """The first two stored values of each crafted row."""
    return [[float(v) for v in values[r, :2].float()] for r in range(len(PATTERNS))]


def attempt(read, w: torch.Tensor):
    """read(w), or the compressor's one-line refusal."""
    try:
        return read(w)
    except RuntimeError as err:
        return str(err).strip().splitlines()[0][:120]


def cslt_values(w: torch.Tensor) -> torch.Tensor:
    return torch._cslt_compress(w).flatten()[: w.numel() // 2].view(w.dtype).view(w.shape[0], -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    lib = cutlass_lib.load()
    w16 = crafted(torch.bfloat16)
    w8, _ = quantize_fp8(w16)
    stored = {"pack_24 bf16": heads(pack_24(w16)[0]), "pack_24 fp8": heads(pack_24(w8)[0]),
              "cuSPARSELt bf16": attempt(lambda w: heads(cslt_values(w)), w16),
              "cuSPARSELt fp8": attempt(lambda w: heads(cslt_values(w)), w8)}
    if lib is not None:
        stored["CUTLASS fp8"] = attempt(lambda w: heads(cutlass_lib.Weight24FP8(lib, w).values), w8)
    table = [{"non_zero_at": list(pattern),
              **{name: rows if isinstance(rows, str) else rows[r] for name, rows in stored.items()}}
             for r, pattern in enumerate(PATTERNS)]
    for row in table:
        print(row)
    same = []
    for out, inp in ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)):
        w = torch.randn(out, inp, device="cuda")
        keep = w.abs().view(out, -1, 4).topk(2, dim=2).indices
        w = w.view(out, -1, 4).gather(2, keep)  # kept values
        w = torch.zeros(out, inp // 4, 4, device="cuda").scatter_(2, keep, w).view(out, inp).to(torch.bfloat16)
        q, _ = quantize_fp8(w)
        row = {"out": out, "in": inp,
               "cslt_bf16": attempt(lambda w: torch.equal(cslt_values(w).view(torch.uint8),
                                                          pack_24(w)[0].view(torch.uint8)), w),
               "cslt_fp8": attempt(lambda w: torch.equal(cslt_values(w).view(torch.uint8),
                                                         pack_24(w)[0].view(torch.uint8)), q)}
        if lib is not None:
            row["cutlass_fp8"] = attempt(lambda w: cutlass_lib.Weight24FP8(lib, w).share_values(pack_24(w)[0]), q)
        print(row)
        same.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment("cuda", "bfloat16"), "groups": table,
                                               "random_24": same}, indent=1))


if __name__ == "__main__":
    main()
