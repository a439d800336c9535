import itertools

import pytest
import torch

from prunekit.sparse.packing import is_24, pack_24, pack_bitmask, unpack_24, unpack_bitmask


def every_24_group() -> torch.Tensor:
    """All 11 supports a 2:4 group can have (0, 1 or 2 non-zeros), with random non-zero values."""
    supports = [()] + [(i,) for i in range(4)] + list(itertools.combinations(range(4), 2))
    groups = torch.zeros(len(supports), 4)
    for row, support in enumerate(supports):
        for i in support:
            groups[row, i] = torch.randn(()).item() or 1.0
    return groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_possible_24_group_round_trips(dtype):
    groups = every_24_group().to(dtype)  # 11 groups
    # every group at every position of an 8-wide row pair: both nibbles of a byte are exercised
    rows = torch.stack([torch.cat([a, b]) for a in groups for b in groups])  # [121, 8]
    values, meta = pack_24(rows)
    assert values.shape == (121, 4) and meta.shape == (121, 1) and meta.dtype == torch.uint8
    restored = unpack_24(values, meta)
    assert torch.equal(restored.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       rows.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_groups_with_fewer_than_two_non_zeros_store_the_gpu_compressors_values():
    """(x, 0) for one non-zero at positions 0-2, (0, x) at position 3, (0, 0) for none: the values cuSPARSELt (bf16
    and FP8) and CUTLASS's FP8 compressor store for these groups, measured on an H100
    (bench/results/compressed_layouts_h100.json); other slot choices would cost a layer a second copy."""
    rows = torch.zeros(5, 8)
    for position in range(4):
        rows[position, position] = 3.0
    rows[:, 4:6] = torch.tensor([1.0, 2.0])  # a full second group
    values, _ = pack_24(rows)
    assert values[:, :2].tolist() == [[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 0.0]]
    assert torch.equal(unpack_24(*pack_24(rows)), rows)


def test_negative_zero_is_kept_bit_exactly():
    W = torch.tensor([[0.0, -0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 2.0]])
    restored = unpack_24(*pack_24(W))
    assert torch.equal(restored.view(torch.int32), W.view(torch.int32))


def test_not_24_is_refused():
    W = torch.ones(2, 8)
    assert not is_24(W)
    with pytest.raises(ValueError, match="not 2:4: 4 groups of 4 have more than 2 non-zeros"):
        pack_24(W)


def test_negative_zeros_from_w_times_mask_are_refused_with_the_fix():
    """`w * mask` leaves -0.0 where w < 0; a 2:4 group cannot hold them (only 2 slots, others unpack as +0.0), so
    the packing refuses them, saying why and what to do, and the suggested fixes pack and round-trip exactly."""
    w = torch.tensor([[-1.0, -2.0, 3.0, 4.0, 5.0, -6.0, -7.0, 8.0]])
    mask = torch.tensor([[False, False, True, True, True, False, False, True]])
    W = w * mask
    assert torch.signbit(W[0, 0]) and not is_24(W)
    with pytest.raises(ValueError, match=r"-0\.0 entries .*w\.masked_fill\(~mask, 0\) or w \+ 0\.0"):
        pack_24(W)
    for fixed in (w.masked_fill(~mask, 0), W + 0.0):
        restored = unpack_24(*pack_24(fixed))
        assert torch.equal(restored.view(torch.int32), fixed.view(torch.int32)) and torch.equal(restored, W)


@pytest.mark.parametrize("cols", [8, 13, 64])
def test_bitmask_round_trip(cols):
    W = torch.randn(7, cols).masked_fill(torch.rand(7, cols) > 0.3, 0.0)
    values, mask = pack_bitmask(W)
    assert values.numel() == int((W != 0).sum()) and mask.shape == (7, -(-cols // 8))
    assert torch.equal(unpack_bitmask(values, mask, cols).view(torch.int32), W.view(torch.int32))


def test_float8_packings_round_trip_bit_exactly():
    """FP8 weights (one byte each) go through the packings as their bytes: torch has no float8 gather/scatter."""
    rows = torch.stack([torch.cat([a, b]) for a in every_24_group() for b in every_24_group()])
    W = (rows * 100).to(torch.float8_e4m3fn)
    assert is_24(W)
    values, meta = pack_24(W)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (121, 4)
    assert torch.equal(unpack_24(values, meta).view(torch.uint8), W.view(torch.uint8))
    dense = torch.randn(5, 13).masked_fill(torch.rand(5, 13) > 0.4, 0.0).to(torch.float8_e4m3fn)
    values, mask = pack_bitmask(dense)
    assert values.dtype == torch.float8_e4m3fn
    assert torch.equal(unpack_bitmask(values, mask, 13).view(torch.uint8), dense.view(torch.uint8))
