"""The sliced model's one-kernel RMS norm equals the unfused RMSN: on a GPU machine the compiled kernel on CUDA,
elsewhere the same kernel through Triton's interpreter on CPU tensors, in this process (tests/sparse/
triton_interpreter.py: no TRITON_INTERPRET=1 needed, so test_kernels_compile.py runs in the same pytest run)."""

import pytest
import torch

from prunekit.methods.slicegpt import fused_norm
from prunekit.methods.slicegpt.layers import RMSN
from sparse import triton_interpreter  # tests/sparse, on sys.path as tests/ is (like conftest)

needs_triton = pytest.mark.skipif(not fused_norm.available(), reason="needs Triton installed (compiled on a CUDA "
                                  "GPU, interpreted on CPU)")


@pytest.fixture
def device():
    """Where the kernel runs: "cuda" compiled, else "cpu" interpreted until the test ends."""
    if torch.cuda.is_available():
        yield "cuda"
        return
    with triton_interpreter.interpreted(fused_norm):
        yield "cpu"


@needs_triton
@pytest.mark.parametrize("shape,mean_dim", [((3, 5, 403), 576), ((1, 64), 64), ((7, 1000), 1536)])
def test_fused_rms_norm_matches_the_unfused_norm(device, shape, mean_dim):
    x = torch.randn(*shape, device=device) * 3
    expected = RMSN(mean_dim, 1e-5)(x.cpu())  # the unfused path (CPU)
    assert torch.allclose(fused_norm.rms_norm(x, mean_dim, 1e-5).cpu(), expected, rtol=1e-5, atol=1e-6)
    w = torch.rand(shape[-1], device=device) + 0.5
    assert torch.allclose(fused_norm.rms_norm(x, mean_dim, 1e-5, w).cpu(), expected * w.cpu(), rtol=1e-5, atol=1e-6)


@needs_triton
def test_fused_rms_norm_reads_rows_by_their_stride(device):
    x = torch.randn(7, 1000, device=device)[:, 100:500]  # row stride 1000, 400 columns
    strided_weight = (torch.rand(400, 2, device=device) + 0.5)[:, 0]
    expected = RMSN(576, 1e-5)(x.cpu()) * strided_weight.cpu()
    assert torch.allclose(fused_norm.rms_norm(x, 576, 1e-5, strided_weight).cpu(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        fused_norm.rms_norm(x, 576, 1e-5, strided_weight[:10])
    assert fused_norm.rms_norm(x[:0], 576, 1e-5).shape == (0, 400)


@needs_triton
def test_fused_rms_norm_in_fp16_is_within_one_rounding(device):
    x = torch.randn(9, 464, device=device) * 4
    expected = RMSN(576, 1e-5)(x.cpu())  # fp32
    got = fused_norm.rms_norm(x.half(), 576, 1e-5).cpu().float()
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=2 ** -10, atol=1e-3)


@pytest.mark.skipif(not (torch.cuda.is_available() and fused_norm.available()), reason="needs a CUDA GPU and Triton")
def test_rmsn_uses_the_kernel_for_half_precision_inference_on_cuda(monkeypatch):
    calls = []
    kernel = fused_norm.rms_norm
    monkeypatch.setattr(fused_norm, "rms_norm", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    norm, x = RMSN(576, 1e-5), torch.randn(2, 3, 464, device="cuda")
    with torch.no_grad():
        fast = norm(x.half())
        norm(x)  # fp32: the unfused path
    assert len(calls) == 1
    assert torch.allclose(fast.float().cpu(), norm(x.cpu()), rtol=2 ** -10, atol=1e-3)
