"""Run an inline-PTX block of prunekit's kernels on the CPU, instruction by instruction, on NumPy arrays (one lane per
element): the PTX that Triton's interpreter cannot run (it takes the kernels' EMULATE branches) checked against the
arithmetic it stands for. Only the instructions the blocks use, with the semantics of NVIDIA's PTX ISA:
  shl/shr/and/or.b32, mov (a value, or a 32-bit word split into its {low, high} 16-bit halves);
  prmt.b32 d, a, b, c (default mode): byte i of d is byte c[4i+2 : 4i] of the 8 bytes b:a (a the low four), or that
      byte's sign bit replicated where c[4i+3] is set;
  cvt.rn.f16x2.e4m3x2 d, a: the E4M3 byte a[7:0] decoded into d's low fp16 half, a[15:8] into its high half (exact);
  cvt.f32.f16 (exact); fma.rn.f32 d, a, b, c: a·b + c rounded once (emulated where a·b is exact in fp32, which is
      checked: it is for every product of two E4M3 values).
Registers hold raw bits (uint32 or uint16 arrays); `$k` is the asm block's k-th operand, outputs first.
"""

from __future__ import annotations

import re

import numpy as np
import torch

_OPERANDS = re.compile(r"\{[^}]*\}|[^,\s][^,]*")


def run(block: str, inputs: dict[int, np.ndarray], outputs: int = 1) -> list[np.ndarray]:
    """Execute `block` ("{ ... }") with operands $outputs.. = inputs (arrays of raw bits, broadcast together);
    returns the raw bits of $0 .. $(outputs − 1)."""
    regs = {f"${k}": np.asarray(v) for k, v in inputs.items()}
    for line in block.strip().strip("{}").split(";"):
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [a.strip() for a in _OPERANDS.findall(rest)]
        d, srcs = args[0], [_value(regs, a) for a in args[1:]]
        regs.update(_execute(op, d, srcs))
    return [regs[f"${k}"] for k in range(outputs)]


def _value(regs: dict, arg: str) -> np.ndarray:
    if arg in regs:
        return regs[arg]
    return np.uint32(int(arg, 0))  # an immediate, e.g. 0x0F0F


def _execute(op: str, d: str, s: list[np.ndarray]) -> dict[str, np.ndarray]:
    u32 = [np.asarray(v).astype(np.uint32) for v in s]
    if op == "mov.b32" and d.startswith("{"):  # split a word into its two 16-bit halves
        lo, hi = (name.strip() for name in d.strip("{}").split(","))
        return {lo: (u32[0] & 0xFFFF).astype(np.uint16), hi: (u32[0] >> 16).astype(np.uint16)}
    if op in ("mov.b32", "mov.f32"):
        return {d: u32[0]}
    if op == "shl.b32":
        return {d: u32[0] << u32[1]}
    if op == "shr.b32":
        return {d: u32[0] >> u32[1]}
    if op == "and.b32":
        return {d: u32[0] & u32[1]}
    if op == "or.b32":
        return {d: u32[0] | u32[1]}
    if op == "prmt.b32":
        a, b, c = np.broadcast_arrays(*u32)
        pool = a.astype(np.uint64) | (b.astype(np.uint64) << np.uint64(32))
        out = np.zeros(a.shape, dtype=np.uint32)
        for i in range(4):
            sel = (c >> np.uint32(4 * i)) & np.uint32(15)
            byte = ((pool >> (np.uint64(8) * (sel & 7).astype(np.uint64))) & np.uint64(0xFF)).astype(np.uint32)
            byte = np.where(sel & 8, np.where(byte & 0x80, np.uint32(0xFF), np.uint32(0)), byte)
            out |= byte << np.uint32(8 * i)
        return {d: out}
    if op == "cvt.rn.f16x2.e4m3x2":
        pair = np.asarray(s[0]).astype(np.uint16)
        lo, hi = (_e4m3_to_f16_bits((pair >> k) & 0xFF) for k in (0, 8))
        return {d: lo.astype(np.uint32) | (hi.astype(np.uint32) << 16)}
    if op == "cvt.f32.f16":
        return {d: np.asarray(s[0]).astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)}
    if op == "fma.rn.f32":
        a, b, c = (v.view(np.float32) for v in np.broadcast_arrays(*u32))
        product = a.astype(np.float64) * b.astype(np.float64)  # exact in fp64 (24 + 24 bits)
        if not np.array_equal(product, product.astype(np.float32).astype(np.float64)):
            raise NotImplementedError("fma emulated only where a·b is exact in fp32")
        return {d: (product.astype(np.float32) + c).astype(np.float32).view(np.uint32)}  # one rounding, as fma
    raise NotImplementedError(f"PTX instruction {op!r} is not emulated")


def _e4m3_to_f16_bits(codes: np.ndarray) -> np.ndarray:
    """fp16 bits of E4M3 codes (torch decodes float8_e4m3fn exactly; every E4M3 value is an fp16 value)."""
    as_fp8 = torch.from_numpy(np.ascontiguousarray(codes.astype(np.uint8))).view(torch.float8_e4m3fn)
    return as_fp8.to(torch.float16).view(torch.int16).numpy().view(np.uint16)
