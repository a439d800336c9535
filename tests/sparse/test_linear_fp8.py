import pytest
import torch

from prunekit.patterns import keep_n_of_m
from prunekit.quantize import LinearFP8, fp8_linear
from prunekit.sparse import kernel_paths
from prunekit.sparse.linear_fp8 import SparseLinear24FP8, sparsify_fp8


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
    assert set(kernel_paths(model)) == {"0"}


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
        assert sparse.paths["cuda"][0] == "cslt_fp8", sparse.paths
        assert dense_cuda.paths["cuda"][0] == "scaled_mm", dense_cuda.paths
