"""Lossless packings of sparse weights, by bit pattern (a weight is "zero" only if all its bits are 0).

2:4 — every group of 4 consecutive inputs holds at most 2 non-zero weights:
  values [out, in/2]: the 2 kept weights of each group, in input order;
  meta   [out, in/8] uint8: per group one nibble i0 | i1 << 2 (i0 < i1, positions 0..3 in the group),
         the even group in the low nibble and the odd group in the high nibble of each byte.
  A group with fewer than 2 non-zeros keeps zero-valued slots at its highest free positions, as the GPU
  compressors do (cuSPARSELt, CUTLASS): its packed values are then theirs byte for byte.
  Storage: in/2 values + in/8 bytes per row, 0.5625× the dense bytes in fp16.
bitmask — any sparsity:
  values [nnz]: the non-zero weights in row-major order;
  mask   [out, ceil(in/8)] uint8: bit k of byte j set when input 8j + k is non-zero.
Unpacking restores the dense tensor bit for bit. One-byte floats (float8_e4m3fn) are packed as their bytes, since
torch's gather and scatter take no float8 tensors.
"""

from __future__ import annotations

import torch

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero_bits(W: torch.Tensor) -> torch.Tensor:
    """True where the element's bits are not all zero (so -0.0 counts as non-zero)."""
    if not W.is_floating_point():
        return W != 0
    return W.view(_INT_VIEW[W.element_size()]) != 0


def is_24(W: torch.Tensor) -> bool:
    """Whether a 2-D weight can be packed as 2:4 without loss."""
    if W.dim() != 2 or W.shape[1] % 8:
        return False
    return bool((nonzero_bits(W).view(W.shape[0], -1, 4).sum(dim=2) <= 2).all())


def _byte_float(W: torch.Tensor) -> bool:
    """A one-byte float (float8): packed through its uint8 view, since the packings move bits, never values."""
    return W.is_floating_point() and W.element_size() == 1


def pack_24(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [out, in/2], meta [out, in/8] uint8) of a 2:4 weight; ValueError if it is not 2:4."""
    if _byte_float(W):
        values, meta = pack_24(W.view(torch.uint8))
        return values.view(W.dtype), meta
    out, cols = W.shape
    if cols % 8:
        raise ValueError(f"2:4 packing needs a multiple of 8 inputs, got {cols}")
    nz = nonzero_bits(W).view(out, cols // 4, 4)
    if (nz.sum(dim=2) > 2).any():
        raise ValueError(_not_24_message(W, nz))
    # non-zero positions first, then the highest free ones; the two chosen sorted ascending. A group with one non-zero
    # thus stores (x, 0) unless x is last, and an empty one (0, 0) at positions 2, 3: the values cuSPARSELt (bf16,
    # FP8) and CUTLASS's compressor store, so a layer's packed values are theirs byte for byte and held once
    # (bench/results/compressed_layouts_h100.json)
    position = torch.arange(4, dtype=torch.int8, device=W.device)
    order = torch.where(nz, position, 7 - position)
    idx = order.argsort(dim=2)[:, :, :2].sort(dim=2).values  # [out, groups, 2]
    values = W.view(out, cols // 4, 4).gather(2, idx).reshape(out, cols // 2)
    nibble = (idx[:, :, 0] | (idx[:, :, 1] << 2)).to(torch.uint8).view(out, cols // 8, 2)
    meta = nibble[:, :, 0] | (nibble[:, :, 1] << 4)
    return values.contiguous(), meta.contiguous()


def _not_24_message(W: torch.Tensor, nz: torch.Tensor) -> str:
    """Why pack_24 refuses W; names -0.0 when only negative zeros break the pattern, since they are kept bit
    for bit (the packing has no slot for a third entry of a group) and a pruning by `w * mask` leaves them."""
    over = int((nz.sum(dim=2) > 2).sum())
    if W.is_floating_point() and ((W != 0).view_as(nz).sum(dim=2) <= 2).all():
        return (f"weight is not 2:4 bit for bit: {over} groups of 4 hold more than 2 non-zero bit patterns because "
                "of -0.0 entries (as `w * mask` leaves where w < 0), which 2:4 packing cannot keep; zero them as "
                "+0.0 first: w.masked_fill(~mask, 0) or w + 0.0")
    return f"weight is not 2:4: {over} groups of 4 have more than 2 non-zeros"


def unpack_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense [out, in] weight from a 2:4 packing."""
    if _byte_float(values):
        return unpack_24(values.view(torch.uint8), meta).view(values.dtype)
    out, half = values.shape
    nibble = torch.stack([meta & 0xF, meta >> 4], dim=2).view(out, half // 2).long()
    idx = torch.stack([nibble & 3, nibble >> 2], dim=2)  # [out, groups, 2]
    W = torch.zeros(out, half // 2, 4, dtype=values.dtype, device=values.device)
    W.scatter_(2, idx, values.view(out, half // 2, 2))
    return W.view(out, half * 2)


def pack_bitmask(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [nnz], mask [out, ceil(in/8)] uint8) of any 2-D weight."""
    if _byte_float(W):
        values, mask = pack_bitmask(W.view(torch.uint8))
        return values.view(W.dtype), mask
    out, cols = W.shape
    nz = nonzero_bits(W)
    padded = torch.zeros(out, -(-cols // 8) * 8, dtype=torch.uint8, device=W.device)
    padded[:, :cols] = nz
    weights = (1 << torch.arange(8, device=W.device)).to(torch.uint8)
    mask = (padded.view(out, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)
    return W[nz].contiguous(), mask


def unpack_bitmask(values: torch.Tensor, mask: torch.Tensor, cols: int) -> torch.Tensor:
    """The dense [out, cols] weight from a bitmask packing."""
    if _byte_float(values):
        return unpack_bitmask(values.view(torch.uint8), mask, cols).view(values.dtype)
    out = mask.shape[0]
    bits = (mask.unsqueeze(2) >> torch.arange(8, device=mask.device, dtype=torch.uint8)) & 1
    nz = bits.view(out, -1)[:, :cols].bool()
    W = torch.zeros(out, cols, dtype=values.dtype, device=values.device)
    W[nz] = values
    return W
