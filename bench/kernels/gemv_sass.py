"""Static look at the 2:4 decode kernel without a GPU: compile `gemv24` for Hopper (sm_90) with Triton's own
ptxas and count the SASS instructions of its main loop per weight value. A memory-bound kernel must spend
only a few: an H200 issues ≈ 1 T warp-instructions/s, so 22.5 M values (an 11008×4096 weight) at 25
instructions each take ≈ 17 µs of issue time alone, about what the whole dense product takes.

    PYTHONPATH=src python bench/kernels/gemv_sass.py [--block-n 4 --block-b 128 --warps 4 --dtype fp16]
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


def sass(block_n: int, block_b: int, warps: int, dtype: str) -> str:
    signature = {"x_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "m_ptr": "*u8", "bias_ptr": f"*{dtype}",
                 "y_ptr": f"*{dtype}", "N": "i32", "K": "i32", "stride_vn": "i32", "stride_mn": "i32"}
    consts = {"BLOCK_N": block_n, "BLOCK_B": block_b, "HAS_BIAS": False, "BF16": dtype == "bf16", "EMULATE": False}
    signature.update({name: "constexpr" for name in consts})
    kernel = triton.compile(triton.compiler.ASTSource(fn=triton_decode._gemv24_kernel, signature=signature,
                                                      constexprs=consts),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 3})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def main_loop(text: str) -> collections.Counter:
    """Opcode counts between the first backward branch and its target (the unmasked main loop)."""
    lines = [(int(m.group(1), 16), m.group(2).strip()) for m in
             (re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in text.splitlines()) if m]
    for address, instruction in lines:
        branch = re.search(r"BRA\s.*?0x([0-9a-f]+)", instruction)
        if branch and int(branch.group(1), 16) < address:
            start = int(branch.group(1), 16)
            body = [i for a, i in lines if start <= a <= address]
            return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in body)
    raise RuntimeError("no loop found in the SASS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-n", type=int, default=4)
    parser.add_argument("--block-b", type=int, default=128)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    args = parser.parse_args()
    ops = main_loop(sass(args.block_n, args.block_b, args.warps, args.dtype))
    values = 4 * args.block_n * args.block_b // (32 * args.warps)  # per thread per loop step
    total = sum(ops.values())
    print(f"main loop: {total} SASS instructions for {values} values per thread = {total / values:.2f} per value; "
          f"most common: {ops.most_common(10)}")


if __name__ == "__main__":
    main()
