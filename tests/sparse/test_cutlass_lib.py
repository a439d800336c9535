import os

import pytest
import torch

from prunekit.quantize.fp8 import quantize_fp8, quantize_per_token
from prunekit.sparse import cutlass_lib
from prunekit.sparse.linear_fp8 import SparseLinear24FP8

from .test_linear_fp8 import fp8_24_linear


@pytest.fixture
def fresh_load():
    cutlass_lib.load.cache_clear()
    yield cutlass_lib.load
    cutlass_lib.load.cache_clear()


def test_no_library_unless_one_is_named(fresh_load, monkeypatch):
    monkeypatch.delenv("PRUNEKIT_CUTLASS", raising=False)
    assert fresh_load() is None
    monkeypatch.setenv("PRUNEKIT_CUTLASS", "off")
    assert fresh_load() is None


def test_a_path_that_is_no_library_warns_with_the_fix_and_is_not_used(fresh_load, monkeypatch, tmp_path):
    bogus = tmp_path / "not_a_library.so"
    bogus.write_text("nothing here")
    monkeypatch.setenv("PRUNEKIT_CUTLASS", str(bogus))
    with pytest.warns(UserWarning, match=r"not a CUTLASS FP8 2:4 library built by .*build.sh with KIND=fp8"):
        assert fresh_load() is None


needs_sm90 = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)),
    reason="needs a CUDA GPU of compute capability 9.0 (the kernels are built for sm_90a)")
needs_library_variable = pytest.mark.skipif(
    not os.environ.get("PRUNEKIT_CUTLASS"),
    reason="needs PRUNEKIT_CUTLASS naming a library built by bench/kernels/cutlass_sm90_24/build.sh with KIND=fp8")


def needs_library(test):
    """GPU first, so that a CPU machine skips for the GPU and a GPU machine without the library says so."""
    return needs_library_variable(needs_sm90(test))


@needs_library
@pytest.mark.parametrize("rows", [17, 300, 2048])
def test_every_configuration_matches_the_exact_product(fresh_load, rows):
    """Each configuration's y = sx · sw · (x̂ Ŵᵀ) against the fp32 product of the same FP8 operands: only the bf16
    rounding of the output and the order of the sum differ."""
    lib = fresh_load()
    layer = fp8_24_linear(1024, 4096)
    w8, sw = layer.weight, layer.weight_scale
    weight = cutlass_lib.Weight24FP8(lib, w8.cuda())
    x8, sx = quantize_per_token(torch.randn(rows, 4096, device="cuda"))
    ref = (x8.float() @ w8.cuda().float().t()) * sx * sw.cuda()
    for config in lib.configs:
        y = weight.mm(x8, sx, sw.cuda(), config).float()
        assert ((y - ref).norm() / ref.norm()) < 1e-2, config


@needs_library
def test_the_layer_offers_cutlass_above_16_rows_and_replays_it_in_a_cuda_graph(fresh_load):
    from prunekit.quantize import fp8_linear

    dense = fp8_24_linear(1024, 4096)
    layer = SparseLinear24FP8.from_linear(dense).cuda()
    x = torch.randn(300, 4096, dtype=torch.bfloat16, device="cuda")
    assert "cutlass_fp8" in layer._fp8_candidates(x) and "cutlass_fp8" not in layer._fp8_candidates(x[:16])
    ref = fp8_linear(x.float().cpu(), dense.weight, dense.weight_scale, dense.bias).cuda()
    y = layer._run_fp8("cutlass_fp8", x)
    assert y is not None and ((y.float() - ref).norm() / ref.norm()) < 1e-2, layer.paths
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer._run_fp8("cutlass_fp8", x)
    graph.replay()
    assert torch.equal(out, y)


@needs_library
def test_the_layer_shares_its_packed_values_with_cutlass_also_where_groups_hold_fewer_than_two(fresh_load):
    """CUTLASS's compressed values are the layer's packed values byte for byte, also for groups with one or no
    non-zero (rows of zeros and single weights here), so the layer holds them once."""
    dense = fp8_24_linear(1024, 4096)
    w = dense.weight.view(torch.uint8)  # written in place
    w[:5, :] = 0  # row 4 stays empty
    for position in range(4):
        w[position, position::4] = 0x38  # 1.0 in E4M3: one non-zero per group, at each position in turn
    layer = SparseLinear24FP8.from_linear(dense).cuda()
    weight = cutlass_lib.Weight24FP8(fresh_load(), layer.fp8_weight())
    assert weight.share_values(layer.values) and weight.values is layer.values


@pytest.mark.parametrize("shape,dense,why", [((1020, 4096), False, "out % 8"), ((1024, 4080), False, "in % 32"),
                                             ((1024, 4096), True, "more than two non-zeros"),
                                             ((1024, 4096), False, "CUDA weight")])
def test_weights_the_kernels_cannot_take_are_refused_before_the_library_runs(shape, dense, why):
    """Refused with CutlassError (the layer's fallback) before any call into the library: the compressor would fault
    on a misaligned K, and a group with three non-zeros would overflow it."""
    w8 = quantize_fp8(torch.randn(*shape))[0] if dense else fp8_24_linear(*shape).weight
    with pytest.raises(cutlass_lib.CutlassError, match=why):
        cutlass_lib.Weight24FP8(object(), w8)  # the library is never reached


def test_the_layer_offers_cutlass_only_above_16_rows_with_a_library_on_sm90(monkeypatch):
    """Which FP8 paths a layer offers, without a GPU: the library, the GPU's generation and the row count stand in."""
    from prunekit.sparse import linear_fp8

    layer = SparseLinear24FP8.from_linear(fp8_24_linear(48, 64))
    monkeypatch.setattr(linear_fp8, "fp8_tensor_cores", lambda device: False)  # cuSPARSELt FP8 left out
    monkeypatch.setattr(linear_fp8.triton_fp8, "available", lambda: False)
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    monkeypatch.setattr(cutlass_lib, "load", lambda: object())
    assert layer._fp8_candidates(torch.zeros(17, 64)) == ["cutlass_fp8"]
    assert layer._fp8_candidates(torch.zeros(16, 64)) == []
    capability[0] = (10, 0)  # the library holds sm_90a code only
    assert layer._fp8_candidates(torch.zeros(17, 64)) == []
    capability[0] = (9, 0)
    monkeypatch.setattr(cutlass_lib, "load", lambda: None)
    assert layer._fp8_candidates(torch.zeros(17, 64)) == []


def test_a_layer_never_compresses_for_cutlass_inside_a_capture(monkeypatch):
    """Compressing synchronizes the stream, which a CUDA-graph capture forbids: inside one the path declines (None)
    without calling the library and without being marked refused, so a later eager call still takes it."""
    layer = SparseLinear24FP8.from_linear(fp8_24_linear(48, 64))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(cutlass_lib, "Weight24FP8", lambda *a: pytest.fail("compressed inside a capture"))
    assert layer._cutlass_fp8(torch.zeros(17, 64)) is None
    assert not layer._cutlass_refused and layer._cutlass is None


def test_weight_memory_counts_cutlass_copy_once_and_shared_values_once():
    """weight_mb counts CUTLASS's compressed weight and metadata beside the layer's own buffers (an FP8 model on the
    cutlass_fp8 path holds them too), and values shared with the layer (share_values) once."""
    from types import SimpleNamespace

    from prunekit.eval.speed import weight_mb

    layer = SparseLinear24FP8.from_linear(fp8_24_linear(64, 128))
    alone = weight_mb(layer)
    values, meta = layer.values.clone(), torch.zeros(64 * 128 // 8, dtype=torch.uint8)
    layer._cutlass = SimpleNamespace(values=values, meta=meta)
    assert weight_mb(layer) * 2**20 == alone * 2**20 + values.nbytes + meta.nbytes
    shared = cutlass_lib.Weight24FP8.__new__(cutlass_lib.Weight24FP8)  # compressed "by CUTLASS" into the same layout
    shared.values, shared.meta = values, meta
    assert shared.share_values(layer.values) and shared.values is layer.values
    layer._cutlass = shared
    assert weight_mb(layer) * 2**20 == alone * 2**20 + meta.nbytes
    other = layer.values.clone()
    other.view(torch.uint8)[0, 0] ^= 1
    assert not shared.share_values(other) and shared.values is layer.values  # different bytes: not shared
