"""triton_fp8.gemv24_fp8, the 1-row FP8 2:4 kernel, on the CPU: its EMULATE branch in Triton's interpreter against the
exact reference product, its inline PTX executed instruction by instruction (ptx_emulator.py), and its tuning key.
Compiling the PTX for sm_89/sm_90: test_kernels_compile.py; the kernel on a GPU: not yet run."""

import numpy as np
import pytest
import torch

from prunekit.quantize.fp8 import fp8_linear, quantize_per_token
from prunekit.sparse import timing, triton_decode, triton_fp8
from prunekit.sparse.linear_fp8 import SparseLinear24FP8

from . import ptx_emulator, triton_interpreter
from .scripted import script_time_calls
from .test_linear_fp8 import fp8_24_linear

needs_triton = pytest.mark.skipif(not triton_interpreter.available(), reason="needs Triton installed")


def e4m3_codes(shape, generator) -> torch.Tensor:
    """Random E4M3 codes (uint8) over the whole range, NaN codes left out (the quantizer never writes them)."""
    codes = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x7E
    return codes


def full_range_layer(out: int, inp: int, bias: bool) -> SparseLinear24FP8:
    """A packed FP8 2:4 layer whose kept weights are random E4M3 codes: subnormals, ±448 and zeros among them."""
    layer = fp8_24_linear(out, inp, bias=bias, seed=out)
    codes = e4m3_codes(layer.weight.shape, torch.Generator().manual_seed(1))
    layer.weight = torch.where(layer.weight.view(torch.uint8) != 0, codes, 0).view(torch.float8_e4m3fn)
    return SparseLinear24FP8.from_linear(layer)


def assert_only_the_sum_order_differs(y, ref, xq, sx, sparse):
    """|y − ref| ≤ 2K·2⁻²⁴·(|x̂| |Q|ᵀ)·s_x·s + 2⁻²²·(|ref| + |b|): two fp32 sums of the same exact products in different
    orders, each within K·2⁻²⁴ of the sum of their magnitudes, then the roundings of the scale and the bias."""
    Q = sparse.fp8_weight().float()
    magnitude = (xq.float().abs() @ Q.abs().t()) * sx * sparse.weight_scale
    bias = sparse.bias.abs() if sparse.bias is not None else 0
    bound = 2 * Q.shape[1] * 2.0 ** -24 * magnitude + 2.0 ** -22 * (ref.abs() + bias)
    assert ((y - ref).abs() <= bound).all(), (y - ref).abs().max()


@needs_triton
@pytest.mark.parametrize("out,inp,bias,block_n,block_b", [
    (17, 96, True, 4, 8),  # N not a multiple of BLOCK_N; 12 index bytes: a full step of 8, then a partial one
    (40, 256, False, 8, 16),  # full steps only
    (5, 64, True, 1, 16),  # a partial step only
])
def test_gemv24_fp8_in_the_interpreter(out, inp, bias, block_n, block_b):
    """gemv24_fp8 (its EMULATE branch) against fp8_linear, the exact product: every product of two E4M3 values is exact
    in fp32, so the two differ only by the order of their fp32 sums, |y − ref| ≤ 2K·2⁻²⁴·(|x̂| |Q|ᵀ)·s_x·s, plus the
    roundings of the scale and the bias. Inputs: random E4M3 values over the whole range (with max |x| = 448, s_x = 1
    and x̂ = x) and a Gaussian row."""
    sparse = full_range_layer(out, inp, bias)
    g = torch.Generator().manual_seed(2)
    on_grid = e4m3_codes((1, inp), g).view(torch.float8_e4m3fn).float()
    on_grid[0, 0] = 448.0
    cfg = {"BLOCK_N": block_n, "BLOCK_B": block_b, "num_warps": 1}
    for x in (on_grid, 3 * torch.randn(1, inp, generator=g)):
        ref = fp8_linear(x, sparse.fp8_weight(), sparse.weight_scale, sparse.bias)
        xq, sx = quantize_per_token(x)
        with triton_interpreter.interpreted(triton_fp8):
            y = triton_fp8.gemv24_fp8(xq, sx, sparse.values, sparse.meta, sparse.weight_scale, sparse.bias,
                                      out_dtype=torch.float32, config=cfg)
            y16 = triton_fp8.gemv24_fp8(xq, sx, sparse.values, sparse.meta, sparse.weight_scale, sparse.bias,
                                        out_dtype=torch.float16, config=cfg)
        assert y.shape == (1, out) and y16.dtype == torch.float16
        assert_only_the_sum_order_differs(y, ref, xq, sx, sparse)
        # the same fp32 sum rounded once to the output type (fp16: the interpreter truncates fp32 to bf16, a GPU rounds)
        assert torch.equal(y16, y.to(torch.float16))


@needs_triton
def test_gemv24_fp8_ptx_step_on_every_index_byte():
    """The inline PTX of gemv24_fp8's step (_PICK_FP8) run by ptx_emulator on all 256 index bytes, with random E4M3 values
    and inputs (every code but NaN): it returns acc + Σ_k v_k · x̂[pos_k], added in value order k = 0..3 in fp32, bit for
    bit, where pos_k = 4·(k // 2) + the byte's k-th 2-bit index (groups a, b: inputs 0-3, 4-7). This checks the index
    spread, the byte permute and the halves each decode writes; ptxas checks the syntax (test_kernels_compile.py)."""
    rng = np.random.default_rng(0)
    lanes = 256 * 64
    m = np.repeat(np.arange(256, dtype=np.uint32), 64)
    v = e4m3_codes((lanes, 4), torch.Generator().manual_seed(3)).numpy()
    x = e4m3_codes((lanes, 8), torch.Generator().manual_seed(4)).numpy()
    assert len(np.unique(v)) == len(np.unique(x)) == 254  # every non-NaN code
    acc = (100 * rng.standard_normal(lanes)).astype(np.float32)
    x_words = x.view(np.uint32)  # [lanes, 2]: bytes 0-3 and 4-7, little-endian as the kernel loads them
    (out,) = ptx_emulator.run(triton_fp8._PICK_FP8.value, {1: v.view(np.uint32)[:, 0], 2: m, 3: x_words[:, 0],
                                                          4: x_words[:, 1], 5: acc.view(np.uint32)})

    def decode(codes):
        return torch.from_numpy(np.ascontiguousarray(codes)).view(torch.float8_e4m3fn).float().numpy()

    v_f, x_f, expected = decode(v), decode(x), acc.copy()
    for k in range(4):
        pos = ((m >> (2 * k)) & 3) + 4 * (k // 2)
        expected = expected + v_f[:, k] * x_f[np.arange(lanes), pos]  # exact product, one fp32 rounding per add
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(out.view(np.float32), expected)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU of compute capability ≥ 8.9 (the PTX decodes E4M3 with an sm_89 instruction)")
@pytest.mark.parametrize("out,inp", [(1024, 4096), (100, 11008)])  # 11008 / 8 index bytes end in a partial step
def test_gemv24_fp8_on_cuda_matches_the_reference(out, inp):
    """The PTX branch on a GPU, every 7th launch configuration, against fp8_linear within the summation-order bound."""
    sparse, gpu = full_range_layer(out, inp, True), full_range_layer(out, inp, True).cuda()  # the same layer twice
    x = torch.randn(1, inp)
    ref = fp8_linear(x, sparse.fp8_weight(), sparse.weight_scale, sparse.bias)
    xq, sx = quantize_per_token(x)
    for cfg in triton_fp8.GEMV_CONFIGS[::7]:
        y = triton_fp8.gemv24_fp8(xq.cuda(), sx.cuda(), gpu.values, gpu.meta, gpu.weight_scale, gpu.bias,
                                  out_dtype=torch.float32, config=cfg).cpu()
        assert_only_the_sum_order_differs(y, ref, xq, sx, sparse)


def test_tune_gemv_keeps_its_own_key_next_to_the_16_bit_gemv(monkeypatch):
    """tune_gemv times its configurations through triton_decode.time_configs (stand-in timings here) and keeps the best
    under (out, in, "gemv_fp8"), apart from gemv24's (out, in, "gemv", dtype) keys."""
    monkeypatch.setattr(triton_decode, "TUNED", {(48, 64, "gemv", torch.bfloat16): {"BLOCK_N": 1}})
    monkeypatch.setattr(triton_decode, "REJECTED", {})
    monkeypatch.setattr(timing, "copies_past_l2", lambda nbytes: 1)
    script_time_calls(monkeypatch, [0.3, RuntimeError("out of registers"), 0.2])
    sparse = SparseLinear24FP8.from_linear(fp8_24_linear())
    configs = triton_fp8.GEMV_CONFIGS[:3]
    best, ms = triton_fp8.tune_gemv(sparse.values, sparse.meta, sparse.weight_scale, configs)
    assert (best, ms) == (configs[2], 0.2) and triton_fp8.gemv_key(sparse.values) == (48, 64, "gemv_fp8")
    assert triton_decode.TUNED == {(48, 64, "gemv", torch.bfloat16): {"BLOCK_N": 1}, (48, 64, "gemv_fp8"): configs[2]}
    assert triton_decode.REJECTED[(48, 64, "gemv_fp8")]["count"] == 1
