"""The fused per-token FP8 quantizer (quantize/per_token.py) gives fp8.quantize_per_token's x̂ and s_x bit for bit:
every E4M3 value, every tie between neighbours (round to nearest even) and its neighbours one fp32 ulp away,
subnormals, signed zeros and random rows of three dtypes; in Triton's interpreter on the CPU, compiled on a GPU."""

import pytest
import torch

from prunekit.quantize import fp8, per_token
from tests.sparse import triton_interpreter

needs_triton = pytest.mark.skipif(not triton_interpreter.available(), reason="needs Triton installed")


def _hard_values() -> torch.Tensor:
    """Every finite E4M3 value, the midpoints between neighbours and the fp32 numbers just either side, ±."""
    codes = torch.arange(0, 127, dtype=torch.uint8).view(fp8.FP8).float()  # 0 … 448
    mids = (codes[1:] + codes[:-1]) / 2
    below, above = torch.nextafter(mids, torch.zeros_like(mids)), torch.nextafter(mids, torch.full_like(mids, 1e9))
    v = torch.cat([codes, mids, below, above])
    return torch.cat([v, -v, torch.tensor([-0.0])])


def _rows(dtype, device="cpu") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hard = torch.cat([torch.tensor([fp8.E4M3_MAX]), _hard_values()]).reshape(1, -1)  # amax 448: s_x = 1, x̂ = fp8(x)
    rows = [(torch.randn(5, 300, generator=g) * 10 ** torch.randint(-4, 4, (5, 1), generator=g)).to(dtype),
            torch.zeros(2, 17, dtype=dtype), torch.randn(1, 4100, generator=g).to(dtype)]
    if dtype == torch.float32:
        rows.append(hard)
    return [r.to(device) for r in rows]


def _check(x: torch.Tensor) -> None:
    q, s = per_token.fused_quantize(x)
    qr, sr = fp8.quantize_per_token(x.cpu())
    assert torch.equal(s.cpu(), sr)
    assert torch.equal(q.view(torch.uint8).cpu(), qr.view(torch.uint8))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_interpreted_kernel_equals_the_reference(dtype):
    with triton_interpreter.interpreted(per_token):
        for x in _rows(dtype):
            _check(x)


@pytest.mark.skipif(not torch.cuda.is_available() or not per_token.available(), reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_kernel_equals_the_reference(dtype):
    for x in _rows(dtype, "cuda"):
        _check(x)
    q, s = per_token.quantize(torch.randn(3, 64, device="cuda").t())  # rows not contiguous: the eager chain
    assert q.shape == (64, 3) and s.shape == (64, 1)


def test_cpu_tensors_take_the_eager_chain():
    x = torch.randn(4, 33)
    q, s = per_token.quantize(x)
    qr, sr = fp8.quantize_per_token(x)
    assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)
