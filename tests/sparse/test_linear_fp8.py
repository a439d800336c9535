import pytest
import torch

from prunekit.patterns import keep_n_of_m
from prunekit.quantize import LinearFP8, fp8_linear
from prunekit.sparse import kernel_paths
from prunekit.sparse.linear_fp8 import SparseLinear24FP8, sparsify_fp8

from . import triton_interpreter


def fp8_24_linear(out=48, inp=64, bias=True, activations="fp8", seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(inp, out, bias=bias)
    W = torch.randn(out, inp, generator=g)
    linear.weight.data = W.masked_fill(~keep_n_of_m(W.abs(), 2, 4), 0.0)
    return LinearFP8.from_linear(linear, activations)


@pytest.mark.parametrize("activations", ["fp8", "none"])
def test_cpu_reference_path_matches_the_dense_fp8_layer_bit_for_bit(activations):
    dense = fp8_24_linear(activations=activations)
    sparse = SparseLinear24FP8.from_linear(dense)
    assert sparse.values.dtype == torch.float8_e4m3fn and sparse.values.shape == (48, 32)
    assert torch.equal(sparse.fp8_weight().view(torch.uint8), dense.weight.view(torch.uint8))
    x = torch.randn(3, 5, 64)
    y = sparse(x)
    assert torch.equal(y, dense(x))
    assert torch.equal(y.reshape(15, 48), fp8_linear(x.reshape(15, 64), dense.weight, dense.weight_scale, dense.bias,
                                                     activations))
    assert torch.equal(sparse.dense_weight(), dense.dense_weight())
    path, reason = sparse.paths["cpu"]
    assert path == "reference" and "exact fp32 product" in reason


def test_sparsify_fp8_packs_only_24_weights_and_kernel_paths_lists_them():
    model = torch.nn.Sequential(fp8_24_linear(), torch.nn.ReLU(), LinearFP8.from_linear(torch.nn.Linear(48, 16)))
    x = torch.randn(4, 64)
    before = model(x)
    assert sparsify_fp8(model) == 1
    assert isinstance(model[0], SparseLinear24FP8) and isinstance(model[2], LinearFP8)
    assert torch.equal(model(x), before)
    assert set(kernel_paths(model)) == {"0", "2"}  # the packed layer and the dense FP8 one both record their paths
    assert kernel_paths(model)["2"]["cpu"][0] == "reference"


def test_dtype_casts_keep_the_packed_fp8_values():
    sparse = SparseLinear24FP8.from_linear(fp8_24_linear())
    values = sparse.values.clone()
    sparse.half()
    assert sparse.values.dtype == torch.float8_e4m3fn and sparse.weight_scale.dtype == torch.float32
    assert torch.equal(sparse.values.view(torch.uint8), values.view(torch.uint8)) and sparse.bias.dtype == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuSPARSELt FP8 on Hopper)")
@pytest.mark.parametrize("rows", [1, 16, 300])
def test_cuda_path_matches_the_reference(rows):
    """On a GPU with FP8 tensor cores the layer runs cuSPARSELt (`cslt_fp8`); elsewhere the reference again. Either
    way it agrees with the fp32 reference up to the bf16 output rounding."""
    dense = fp8_24_linear(1024, 4096)
    sparse = SparseLinear24FP8.from_linear(dense).cuda()
    x = torch.randn(rows, 4096, dtype=torch.bfloat16, device="cuda")
    ref = fp8_linear(x.float().cpu(), dense.weight, dense.weight_scale, dense.bias).cuda()
    y = sparse(x).float()
    assert ((y - ref).norm() / ref.norm()) < 1e-2, sparse.paths
    dense_cuda = dense.cuda()
    assert ((dense_cuda(x).float() - ref).norm() / ref.norm()) < 1e-2, dense_cuda.paths
    if torch.cuda.get_device_capability() >= (9, 0):  # Hopper: the kernels must be the ones that ran, not a fallback
        # the fastest of those offered: gemv_fp8 for 1 row, triton_fp8 up to 16, cutlass_fp8 above (PRUNEKIT_CUTLASS),
        # cslt_fp8 always
        from prunekit.sparse import cutlass_lib
        fastest = {"cslt_fp8"} | ({"triton_fp8"} if rows <= 16 else set()) | ({"gemv_fp8"} if rows == 1 else set()) \
            | ({"cutlass_fp8"} if rows > 16 and cutlass_lib.load() is not None else set())
        assert sparse.paths[f"cuda, rows={rows}"][0] in fastest and "cuda" not in sparse.paths, sparse.paths
        assert dense_cuda.paths["cuda"][0] == "scaled_mm", dense_cuda.paths


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_triton_fp8_kernel_on_cuda_matches_the_reference(rows):
    from prunekit.quantize.fp8 import quantize_per_token
    from prunekit.sparse import triton_fp8

    dense = fp8_24_linear(1024, 4096)
    sparse = SparseLinear24FP8.from_linear(dense).cuda()
    x = torch.randn(rows, 4096, device="cuda")
    ref = fp8_linear(x.cpu(), dense.weight, dense.weight_scale, dense.bias).cuda()
    xq, sx = quantize_per_token(x)
    y = triton_fp8.spmm24_fp8(xq, sx, sparse.values, sparse.meta, sparse.weight_scale, sparse.bias, torch.float32)
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.skipif(not triton_interpreter.available(), reason="needs Triton installed (runs its interpreter on CPU)")
@pytest.mark.parametrize("rows,out,inp,bias", [(1, 40, 256, True), (5, 17, 96, False), (16, 64, 512, True)])
def test_triton_fp8_kernel_in_the_interpreter(rows, out, inp, bias):
    """spmm24_fp8 against the exact reference product of the FP8 layer (fp8_linear), in Triton's interpreter: the E4M3
    bytes decoded in the kernel, every product exact in fp32, so only the order of the sum differs. The weights span
    E4M3's whole range (subnormals, ±448, zeros) and the inputs several scales per row."""
    from prunekit.quantize.fp8 import quantize_per_token
    from prunekit.sparse import triton_fp8

    layer = fp8_24_linear(out, inp, bias=bias, seed=rows)
    codes = torch.randint(0, 256, layer.weight.shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x7E  # no NaN codes: the quantizer never writes them
    layer.weight = torch.where(layer.weight.view(torch.uint8) != 0, codes, 0).view(torch.float8_e4m3fn)
    sparse = SparseLinear24FP8.from_linear(layer)
    x = torch.randn(rows, inp) * torch.logspace(-2, 2, rows).unsqueeze(1)
    ref = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias)
    xq, sx = quantize_per_token(x)
    small = {"BLOCK_N": 16, "BLOCK_K": 64, "num_warps": 4}
    with triton_interpreter.interpreted(triton_fp8):
        y = triton_fp8.spmm24_fp8(xq, sx, sparse.values, sparse.meta, sparse.weight_scale, sparse.bias,
                                  out_dtype=torch.float32, config=small)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_fp8_path_choice_times_refuses_and_hands_over(monkeypatch):
    """The per-row-count choice between the two FP8 kernels, without a GPU: the kernels replaced by stand-ins. The
    faster one is kept for the shape; one that refuses while being timed is left out; a call captured before any
    timing takes cuSPARSELt untimed; a layer whose planned kernel refuses hands the call to the other."""
    from prunekit.sparse import linear_fp8, timing

    monkeypatch.setattr(linear_fp8, "FP8_PLANS", {})
    monkeypatch.setattr(linear_fp8, "FP8_REASONS", {})
    monkeypatch.setattr(timing, "cold_timer", lambda device: lambda call: call().item())  # "ms" = the stand-in's value
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    layer = SparseLinear24FP8.from_linear(fp8_24_linear())
    calls = []

    def run(path, x2, ms={"triton_fp8": 1.0, "cslt_fp8": 2.0}):
        calls.append(path)
        refused = layer._fp8_refused if path == "cslt_fp8" else layer._triton_refused
        return None if refused else torch.tensor(ms[path])

    monkeypatch.setattr(layer, "_fp8_candidates",
                        lambda x2: [p for p, no in (("triton_fp8", layer._triton_refused),
                                                    ("cslt_fp8", layer._fp8_refused)) if not no])
    monkeypatch.setattr(layer, "_run_fp8", run)
    x = torch.zeros(1, 64)
    assert layer._cuda_fp8(x).item() == 1.0  # triton timed faster
    assert linear_fp8.FP8_PLANS[(48, 64, 1)] == "triton_fp8" and "cslt_fp8 2.0000 ms" in layer.paths["cuda, rows=1"][1]
    layer._triton_refused = True  # e.g. another GPU: the planned kernel refuses, cuSPARSELt takes the call
    assert layer._cuda_fp8(x).item() == 2.0
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    layer._triton_refused = False
    assert layer._cuda_fp8(torch.zeros(3, 64)).item() == 2.0  # untimed under capture: cuSPARSELt
    assert "untimed" in layer.paths["cuda, rows=3"][1] and (48, 64, 3) not in linear_fp8.FP8_PLANS
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    layer._fp8_refused = True  # cuSPARSELt refuses while rows=5 is timed: Triton alone, the refusal in the reason
    monkeypatch.setattr(layer, "_fp8_candidates", lambda x2: ["triton_fp8", "cslt_fp8"])
    assert layer._cuda_fp8(torch.zeros(5, 64)).item() == 1.0
    assert linear_fp8.FP8_PLANS[(48, 64, 5)] == "triton_fp8" and "cslt_fp8 refused" in layer.paths["cuda, rows=5"][1]


@pytest.mark.parametrize("capability,rows,offered", [((9, 0), 1, True), ((8, 9), 1, True), ((8, 6), 1, False),
                                                     ((8, 0), 1, False), ((9, 0), 2, False), ((9, 0), 16, False)])
def test_gemv_fp8_is_offered_for_one_row_from_compute_capability_8_9(monkeypatch, capability, rows, offered):
    """The 1-row FP8 kernel is a candidate for exactly 1 row on GPUs of compute capability ≥ 8.9 (its PTX decodes E4M3
    with an sm_89 instruction), first in the list, so that a capture before any timing still takes cuSPARSELt (last)."""
    from types import SimpleNamespace

    from prunekit.sparse import linear_fp8, triton_fp8

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(linear_fp8, "cusparselt_available", lambda: True)
    monkeypatch.setattr(triton_fp8, "available", lambda: True)
    layer = SparseLinear24FP8.from_linear(fp8_24_linear())
    x2 = SimpleNamespace(shape=(rows, 64), device=torch.device("cuda"))  # a stand-in: only shape and device are read
    fp8 = capability >= (8, 9)
    assert layer._fp8_candidates(x2) == ["gemv_fp8"] * offered + ["triton_fp8"] + ["cslt_fp8"] * fp8
    layer._gemv_refused = True
    assert "gemv_fp8" not in layer._fp8_candidates(x2)


def test_gemv_fp8_is_timed_against_the_others_and_hands_over(monkeypatch):
    """With three FP8 kernels for 1 row the fastest is kept and recorded with all three timings; when it refuses later
    the next candidate takes the call (kernels replaced by stand-ins, as in the test above)."""
    from prunekit.sparse import linear_fp8, timing

    monkeypatch.setattr(linear_fp8, "FP8_PLANS", {})
    monkeypatch.setattr(linear_fp8, "FP8_REASONS", {})
    monkeypatch.setattr(timing, "cold_timer", lambda device: lambda call: call().item())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    layer = SparseLinear24FP8.from_linear(fp8_24_linear())
    ms = {"gemv_fp8": 0.5, "triton_fp8": 1.0, "cslt_fp8": 2.0}
    refused = {"gemv_fp8": False, "triton_fp8": False, "cslt_fp8": False}
    monkeypatch.setattr(layer, "_fp8_candidates", lambda x2: [p for p in ms if not refused[p]])
    monkeypatch.setattr(layer, "_run_fp8", lambda path, x2: None if refused[path] else torch.tensor(ms[path]))
    x = torch.zeros(1, 64)
    assert layer._cuda_fp8(x).item() == 0.5
    path, reason = layer.paths["cuda, rows=1"]
    assert path == "gemv_fp8" == linear_fp8.FP8_PLANS[(48, 64, 1)]
    assert all(f"{p} {t:.4f} ms" in reason for p, t in ms.items())
    refused["gemv_fp8"] = True  # e.g. the kernel refuses on another GPU: the next candidate takes the call
    monkeypatch.setattr(layer, "_fp8_candidates", lambda x2: list(ms))
    assert layer._cuda_fp8(x).item() == 1.0


@pytest.mark.skipif(not triton_interpreter.available(), reason="needs Triton installed (runs its interpreter on CPU)")
def test_layer_runs_gemv_fp8_and_records_its_refusal(monkeypatch):
    """The layer's gemv_fp8 path quantizes the row and runs gemv24_fp8 with the launch configuration tuned for its shape
    (here its EMULATE branch in Triton's interpreter, against the CPU reference path); where tuning finds no
    configuration that compiles, the path refuses, records why and is not offered again."""
    from prunekit.sparse import triton_decode, triton_fp8

    layer = SparseLinear24FP8.from_linear(fp8_24_linear(out=20, inp=96))
    monkeypatch.setattr(triton_decode, "TUNED", {triton_fp8.gemv_key(layer.values): {"BLOCK_N": 8, "BLOCK_B": 8,
                                                                                      "num_warps": 1}})
    x = torch.randn(1, 96)
    with triton_interpreter.interpreted(triton_fp8):
        y = layer._run_fp8("gemv_fp8", x)
    ref = layer(x)  # CPU: fp8_linear, the exact product
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())

    monkeypatch.setattr(triton_decode, "TUNED", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def no_config(*args, **kwargs):
        raise RuntimeError("no gemv_fp8 launch configuration compiled for this GPU (86 rejected; last: ...)")

    monkeypatch.setattr(triton_fp8, "tune_gemv", no_config)
    assert layer._run_fp8("gemv_fp8", x) is None and layer._gemv_refused and not layer._triton_refused
    assert "gemv_fp8 refused: no gemv_fp8 launch configuration" in layer.paths["cuda"][1]
