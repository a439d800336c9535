"""The sliced model's one-kernel RMS norm equals the unfused RMSN (runs the Triton kernel on CPU only under
TRITON_INTERPRET=1; on a GPU machine it runs on CUDA)."""

import os

import pytest
import torch

from prunekit.methods.slicegpt import fused_norm
from prunekit.methods.slicegpt.layers import RMSN


def where() -> str | None:
    if not fused_norm.available():
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


@pytest.mark.skipif(where() is None, reason="needs Triton with a CUDA GPU, or TRITON_INTERPRET=1 on the CPU")
@pytest.mark.parametrize("shape,mean_dim", [((3, 5, 403), 576), ((1, 64), 64), ((7, 1000), 1536)])
def test_fused_rms_norm_matches_the_unfused_norm(shape, mean_dim):
    device = where()
    x = torch.randn(*shape, device=device) * 3
    expected = RMSN(mean_dim, 1e-5)(x.cpu())  # the unfused path (CPU)
    assert torch.allclose(fused_norm.rms_norm(x, mean_dim, 1e-5).cpu(), expected, rtol=1e-5, atol=1e-6)
    w = torch.rand(shape[-1], device=device) + 0.5
    assert torch.allclose(fused_norm.rms_norm(x, mean_dim, 1e-5, w).cpu(), expected * w.cpu(), rtol=1e-5, atol=1e-6)
    strided = x.transpose(0, -1) if x.dim() == 2 else x
    assert torch.allclose(fused_norm.rms_norm(strided, mean_dim, 1e-5).cpu(), RMSN(mean_dim, 1e-5)(strided.cpu()),
                          rtol=1e-5, atol=1e-6)
