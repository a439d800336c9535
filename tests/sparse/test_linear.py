import pytest
import torch

from prunekit.patterns import keep_n_of_m
from prunekit.sparse import SparseLinear24, convertible_shapes, sparsify, triton_decode
from prunekit.sparse.packing import pack_24, unpack_24

from . import triton_interpreter


def random_24(out=48, inp=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g).to(dtype)
    return W.masked_fill(~keep_n_of_m(W.abs().float(), 2, 4), 0.0)


def test_module_matches_dense_linear_on_cpu():
    linear = torch.nn.Linear(64, 48)
    linear.weight.data = random_24()
    sparse = SparseLinear24.from_linear(linear)
    x = torch.randn(3, 5, 64)
    assert torch.allclose(sparse(x), linear(x), atol=1e-6)
    assert torch.equal(sparse.dense_weight(), linear.weight.data)


def test_sparsify_replaces_only_24_linears():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    model[0].weight.data = random_24()
    x = torch.randn(4, 64)
    before = model(x)
    assert sparsify(model) == 1
    assert isinstance(model[0], SparseLinear24) and isinstance(model[2], torch.nn.Linear)
    assert torch.allclose(model(x), before, atol=1e-6)
    assert sparsify(torch.nn.Sequential(torch.nn.Linear(64, 48)), shapes={(16, 64)}) == 0


def test_fallback_choice_is_deterministic_for_a_timing_table():
    table = [
        {"out": 4096, "in": 4096, "tokens": 1, "dense_ms": 0.013, "sparse_ms": 0.0134},  # 3.1% slower: dense
        {"out": 4096, "in": 4096, "tokens": 2048, "dense_ms": 0.09, "sparse_ms": 0.06},
        {"out": 11008, "in": 4096, "tokens": 1, "dense_ms": 0.027, "sparse_ms": 0.0278},  # 2.96% slower: allowed
        {"out": 11008, "in": 4096, "tokens": 2048, "dense_ms": 0.25, "sparse_ms": 0.17},
    ]
    assert convertible_shapes(table) == {(11008, 4096)}
    assert convertible_shapes(list(reversed(table))) == {(11008, 4096)}
    assert convertible_shapes(table, tolerance=0.05) == {(4096, 4096), (11008, 4096)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuSPARSELt and Triton kernels)")
@pytest.mark.parametrize("rows", [1, 7, 16, 128, 2048])
def test_cuda_paths_match_dense_in_fp16(rows):
    linear = torch.nn.Linear(4096, 1024, dtype=torch.float16, device="cuda")
    linear.weight.data = random_24(1024, 4096, torch.float16).cuda()
    sparse = SparseLinear24.from_linear(linear)
    x = torch.randn(rows, 4096, dtype=torch.float16, device="cuda")
    ref = linear(x).float()
    assert ((sparse(x).float() - ref).norm() / ref.norm()) < 2e-3


@pytest.mark.skipif(not torch.cuda.is_available() or not triton_decode.available(),
                    reason="needs a CUDA GPU and Triton (gemv24 runs inline PTX)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out,inp", [(1024, 4096), (100, 11008)])  # 11008 / 8 bytes end in a partial step
def test_gemv_matches_dense_on_cuda(dtype, out, inp):
    W = random_24(out, inp, dtype).cuda()
    values, meta = pack_24(W)
    x, bias = torch.randn(1, inp, dtype=dtype, device="cuda"), torch.randn(out, dtype=dtype, device="cuda")
    ref = (x.float() @ W.float().T + bias.float())
    for cfg in triton_decode.GEMV_CONFIGS[::7]:
        y = triton_decode.gemv24(x, values, meta, bias, cfg).float()
        assert ((y - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2), cfg


@pytest.mark.skipif(not torch.cuda.is_available() or not triton_decode.available(), reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,out,inp", [(16, 1024, 4096), (5, 100, 11072)])  # 11072: a partial last step
def test_spmm_matches_dense_on_cuda(dtype, rows, out, inp):
    W = random_24(out, inp, dtype).cuda()
    values, meta = pack_24(W)
    x, bias = torch.randn(rows, inp, dtype=dtype, device="cuda"), torch.randn(out, dtype=dtype, device="cuda")
    ref = x.float() @ W.float().T + bias.float()
    for cfg in triton_decode.CONFIGS[::3] + [triton_decode.DEFAULT_CONFIG]:  # every tile size and split-K factor
        y = triton_decode.spmm24(x, values, meta, bias, cfg).float()
        assert ((y - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2), cfg
        for _ in range(20):  # split-K's last program reads the others' partials: a race would change the sums
            assert torch.equal(triton_decode.spmm24(x, values, meta, bias, cfg).float(), y), cfg
    assert not triton_decode.arrival_counts(x.device, 1).any()


@pytest.mark.skipif(not triton_interpreter.available(), reason="needs Triton installed (runs its interpreter on CPU)")
@pytest.mark.parametrize("rows,out,inp", [(1, 40, 256), (1, 17, 96), (5, 17, 96), (16, 64, 512)])
def test_triton_kernels_in_the_interpreter(rows, out, inp):
    """spmm24 and gemv24 against the dense product, run by Triton's interpreter in this process (see
    triton_interpreter.py). gemv24's inline PTX cannot run in the interpreter, so on CPU its EMULATE branch (the
    same sums in plain Triton operations) runs here; the PTX branch is built for sm_80 and sm_90 by
    test_kernels_compile.py (ptxas checks it) and run against dense by test_gemv_matches_dense_on_cuda on a GPU."""
    W = random_24(out, inp)
    values, meta = pack_24(W)
    x, bias = torch.randn(rows, inp), torch.randn(out)
    with triton_interpreter.interpreted(triton_decode):
        for small in ({"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 2, "num_warps": 4},  # split-K, partial steps
                      {"BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 1, "num_warps": 4}):
            y = triton_decode.spmm24(x, values, meta, bias, small)
            assert torch.allclose(y, x @ W.T + bias, atol=1e-4)
            assert torch.equal(triton_decode.spmm24(x, values, meta, bias, small), y)  # split-K sums in a fixed order
        assert not triton_decode.arrival_counts(x.device, 1).any()  # the last program of each block reset its count
        if rows == 1:  # gemv24 reads 16-bit floats; here its plain-Triton twin of the PTX step runs
            for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
                v16, x16, b16 = values.to(dtype), x.to(dtype), bias.to(dtype)
                ref = x16.float() @ unpack_24(v16, meta).float().T + b16.float()
                for block_n, block_b in ((4, 8), (1, 64)):  # full steps and a partial one; a partial step only
                    cfg = {"BLOCK_N": block_n, "BLOCK_B": block_b, "num_warps": 1}
                    y = triton_decode.gemv24(x16, v16, meta, b16, cfg).float()
                    assert ((y - ref).norm() / ref.norm()) < tol


def test_newer_cusparselt_choice():
    """PRUNEKIT_CUSPARSELT wins when usable; else the newest library ≥ 0.8.1 and ≥ torch's; else none."""
    from prunekit.sparse.cusparselt_lib import pick

    found = [("/env/lib", (0, 9, 1)), ("/pip/cu13", (0, 10, 0)), ("/pip/old", (0, 8, 0))]
    assert pick(found, 800, "/env/lib") == "/env/lib"
    assert pick(found, 800, None) == "/pip/cu13"
    assert pick(found, 1000, "/env/lib") == "/pip/cu13"  # older than torch's own: not used
    assert pick([("/env/lib", (0, 8, 0))], 0, "/env/lib") is None  # the Hopper regression
    assert pick([], 800, None) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("out_rows", [True, False])
def test_newer_cusparselt_products_match_dense(out_rows):
    """Every algorithm id of the newer library (where one is installed) computes x Wᵀ, in both output orders."""
    from prunekit.sparse import cusparselt_lib

    lib = cusparselt_lib.load()
    if lib is None:
        pytest.skip("needs a CUDA GPU and a cuSPARSELt newer than torch's (pip nvidia-cusparselt-cu13 or "
                    "PRUNEKIT_CUSPARSELT)")
    W = random_24(1024, 4096, torch.float16).cuda()
    x = torch.randn(48, 4096, dtype=torch.float16, device="cuda")
    ref = (x @ W.t()).float()
    weight = cusparselt_lib.Weight24(lib, W)
    searched = weight.searched(x, out_rows)
    ran = []
    for alg in range(weight.plan(48, out_rows, searched).max_alg):
        try:
            y = weight.mm(x, out_rows, alg)
        except cusparselt_lib.CusparseLtError:  # an id the library refuses for this shape
            continue
        assert y.shape == (48, 1024) and y.is_contiguous() == out_rows
        assert ((y.float() - ref).norm() / ref.norm()) < 2e-3, alg
        ran.append(alg)
    assert searched in ran and len(ran) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sparse_linear_through_newer_cusparselt_graphed():
    """With the newer library: bias, row counts that pad to the same 16-row plan, and replay in a CUDA graph."""
    from prunekit.sparse import cusparselt_lib
    from prunekit.sparse.timing import graph

    if cusparselt_lib.load() is None:
        pytest.skip("needs a CUDA GPU and a cuSPARSELt newer than torch's (pip nvidia-cusparselt-cu13 or "
                    "PRUNEKIT_CUSPARSELT)")
    linear = torch.nn.Linear(4096, 1024, dtype=torch.float16, device="cuda")
    linear.weight.data = random_24(1024, 4096, torch.float16).cuda()
    sparse = SparseLinear24.from_linear(linear)
    for rows in (17, 32, 33):
        x = torch.randn(rows, 4096, dtype=torch.float16, device="cuda")
        ref = linear(x).float()
        with torch.no_grad():
            y = sparse(x)
            assert sparse._lib_weight is not None and y.shape == (rows, 1024)
            assert ((y.float() - ref).norm() / ref.norm()) < 2e-3
            out = {}
            replay = graph(lambda: out.__setitem__("y", sparse(x)))
            x.normal_()
            replay()
            ref = linear(x).float()
            assert ((out["y"].float() - ref).norm() / ref.norm()) < 2e-3


def test_tune_never_chooses_a_launch_that_computes_something_else(monkeypatch):
    """tune checks each launch's result against the dense product before timing it: a faster launch with a wrong
    result (as a split-K race would give) is rejected and counted, and the correct one is chosen."""
    W = random_24(64, 256)
    values, meta = pack_24(W)
    good, bad = dict(triton_decode.DEFAULT_CONFIG), {**triton_decode.DEFAULT_CONFIG, "SPLIT_K": 8}
    last = {}

    def spmm(x, v, m, bias=None, config=None):
        last["config"] = config
        y = x @ unpack_24(v, m).T
        return y * 1.5 if config is bad else y

    def time_calls(calls, repeats=10):
        for call in calls[:1]:
            call()
        return 0.5 if last["config"] is bad else 1.0  # the wrong launch would win the timing

    monkeypatch.setattr(triton_decode, "spmm24", spmm)
    monkeypatch.setattr(triton_decode.timing, "time_calls", time_calls)
    monkeypatch.setattr(triton_decode.timing, "copies_past_l2", lambda nbytes: 1)
    monkeypatch.setattr(triton_decode, "TUNED", {})
    best, ms = triton_decode.tune(values, meta, 16, configs=[bad, good])
    assert best is good and ms == 1.0
    assert triton_decode.REJECTED[(64, 256, 16, values.dtype)]["count"] == 1
    assert "relative error" in triton_decode.REJECTED[(64, 256, 16, values.dtype)]["last"]
