"""Static look at the 2:4 decode kernel without a GPU: compile `gemv24` for Hopper (sm_90) with Triton's own
ptxas and count its SASS instructions by kind, for each way of reading the indices (META_DIRECT 0/1).
Shared-memory traffic (STS/LDS) and barriers (BAR) in the loop mean register layouts converted through
shared memory.

    PYTHONPATH=src python bench/gemv_sass.py [--block-n 4 --block-v 512 --warps 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from prunekit.sparse import triton_decode

SIGNATURE = {"x_ptr": "*fp16", "v_ptr": "*fp16", "m_ptr": "*u8", "bias_ptr": "*fp16", "y_ptr": "*fp16", "N": "i32",
             "K": "i32", "stride_vn": "i32", "stride_mn": "i32", "BLOCK_N": "constexpr", "BLOCK_V": "constexpr",
             "HAS_BIAS": "constexpr", "META_DIRECT": "constexpr"}


def sass_counts(block_n: int, block_v: int, warps: int, direct: int) -> tuple[int, collections.Counter, int]:
    consts = {"BLOCK_N": block_n, "BLOCK_V": block_v, "HAS_BIAS": False, "META_DIRECT": direct}
    kernel = triton.compile(triton.compiler.ASTSource(fn=triton_decode._gemv24_kernel, signature=SIGNATURE,
                                                      constexprs=consts),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 3})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ops = [m.group(2) for m in (re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)", line)
                                for line in sass.splitlines()) if m]
    return len(ops), collections.Counter(op.split(".")[0] for op in ops), kernel.metadata.shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-n", type=int, default=4)
    parser.add_argument("--block-v", type=int, default=512)
    parser.add_argument("--warps", type=int, default=2)
    args = parser.parse_args()
    per_thread = args.block_n * args.block_v // (32 * args.warps)
    for direct in (0, 1):
        total, ops, shared = sass_counts(args.block_n, args.block_v, args.warps, direct)
        print(f"META_DIRECT={direct}: {total} SASS instructions ({per_thread} values per thread per loop step), "
              f"shared memory {shared} B, STS {ops['STS']} LDS {ops['LDS']} BAR {ops['BAR']}, "
              f"LDG {ops['LDG']}, FFMA {ops['FFMA']}; most common: {ops.most_common(8)}")


if __name__ == "__main__":
    main()
