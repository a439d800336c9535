"""FP8 (E4M3) quantization: the numbers (scales, rounding, the reference product), the compensated column pass
(SparseGPT with quantize="fp8", GPTQ on a pruned weight) and `prunekit.quantize` on a whole model."""

import pytest
import torch

from conftest import random_windows, tiny_llama
from prunekit import FP8Config, MagnitudeConfig, SparseGPTConfig, UsageError, get_adapter, prune, quantize
from prunekit.layerwise import reconstruction_error
from prunekit.patterns import keep_n_of_m, max_nonzeros_per_group
from prunekit.pruners.sparsegpt import GPTQConfig
from prunekit.quantize import LinearFP8, dequantize_fp8, fp8_linear, fp8_scale, quantize_fp8
from prunekit.quantize.fp8 import E4M3_MAX, to_fp8

#: ‖W X − Ŵ X‖² / ‖W X‖² of FP8 rounding on these layers is about 5–8e-4 (E4M3 keeps 3 mantissa bits: each weight
#: within 2⁻⁴ of itself, ≈ 2⁻⁴/√3 relative on average, ≈ 1.3e-3 squared); the compensated passes must stay below
OUTPUT_ERROR_BOUND = 1e-3


def outlier_inputs(tokens=2048, dim=128, seed=0):
    """Correlated features, four of them 30× larger: the outlier channels of LLM activations, which are what makes
    compensating the rounding error pay (on SmolLM2's own activations GPTQ removed 70% of FP8's output error)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.ones(dim)
    scales[torch.randperm(dim, generator=g)[:4]] = 30.0
    return (torch.randn(tokens, dim, generator=g) @ (torch.randn(dim, dim, generator=g) / dim**0.5)) * scales


def run(config, W, X):
    pruner = config.make_pruner(W.shape[1], "cpu")
    pruner.add_batch(X)
    return pruner.prune(W).weight


def on_fp8_grid(W: torch.Tensor) -> bool:
    """W is Q·s for some FP8 Q and power-of-two per-row s: rounding it again changes no bit."""
    return torch.equal(dequantize_fp8(*quantize_fp8(W)), W.float())


def test_scales_are_powers_of_two_covering_each_row():
    W = torch.randn(64, 96) * torch.logspace(-4, 2, 64).unsqueeze(1)
    W[3] = 0.0
    s = fp8_scale(W)
    mantissa, _ = torch.frexp(s)
    assert (mantissa == 0.5).all() and s[3] == 1.0
    amax = W.abs().amax(1)
    assert (amax <= E4M3_MAX * s).all() and (amax[amax > 0] > E4M3_MAX * s[amax > 0] / 2).all()


def test_round_to_nearest_is_within_half_a_step():
    """|Q·s − W| ≤ 2⁻⁴ |W| (half a step of 3 mantissa bits) in the normal range, ≤ half the subnormal step 2⁻¹⁰·s
    below it; a weight that rounds to zero is +0.0, never -0.0."""
    W = torch.randn(32, 256) * torch.logspace(-3, 1, 32).unsqueeze(1)
    Q, s = quantize_fp8(W)
    err = (dequantize_fp8(Q, s) - W).abs()
    assert (err <= 2.0**-4 * W.abs() + 2.0**-10 * s.unsqueeze(1)).all()
    assert not (to_fp8(torch.tensor([-1e-12, -0.0])).view(torch.uint8) == 0x80).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_weights_survive_the_model_dtype_and_requantize_to_themselves(dtype):
    """Q·s is exact in bf16; quantizing it again gives the same product bit for bit, also for a row whose largest
    weight was pruned or shrank (its scale comes out smaller, its Q larger by the same power of two)."""
    W = dequantize_fp8(*quantize_fp8(torch.randn(16, 64)))
    scale = fp8_scale(W)
    W[0, W[0].abs().argmax()] = 0.0
    W[1] /= 8
    held = W.to(dtype)
    assert torch.equal(held.float(), W)
    assert on_fp8_grid(held)
    assert fp8_scale(held)[1] == scale[1] / 8


def test_reference_product_applies_the_scales_after_the_matmul():
    W = torch.randn(48, 64)
    Q, s = quantize_fp8(W)
    x, bias = torch.randn(5, 64), torch.randn(48)
    weight_only = fp8_linear(x, Q, s, bias, activations="none")
    assert torch.allclose(weight_only, x @ dequantize_fp8(Q, s).t() + bias, atol=1e-5)
    w8a8 = fp8_linear(x, Q, s, bias, activations="fp8")
    assert ((w8a8 - weight_only).norm() / weight_only.norm()) < 0.05  # the inputs' own FP8 rounding
    assert fp8_linear(x.bfloat16(), Q, s, None).dtype == torch.bfloat16


def test_gptq_keeps_the_mask_and_beats_round_to_nearest():
    """GPTQ on a 2:4-pruned weight: zeros stay zeros, every weight lands on the FP8 grid, and the output error on the
    calibration inputs is below round-to-nearest's and below OUTPUT_ERROR_BOUND."""
    for seed in range(3):
        X = outlier_inputs(seed=seed)
        W = torch.randn(64, 128, generator=torch.Generator().manual_seed(10 + seed))
        pruned = run(SparseGPTConfig(pattern="2:4"), W, X)
        gptq = run(GPTQConfig(), pruned, X)
        rtn = dequantize_fp8(*quantize_fp8(pruned))
        assert ((gptq != 0) <= (pruned != 0)).all()  # a kept weight may round to zero; no zero comes back
        assert max_nonzeros_per_group(gptq, 4) <= 2 and on_fp8_grid(gptq)
        assert reconstruction_error(pruned, gptq, X) < reconstruction_error(pruned, rtn, X) < OUTPUT_ERROR_BOUND


def test_one_pass_prunes_and_quantizes_better_than_pruning_then_rounding():
    """SparseGPT(quantize="fp8"): 2:4, on the FP8 grid, and closer to the dense outputs than SparseGPT followed by
    round-to-nearest; the FP8 rounding adds less than OUTPUT_ERROR_BOUND to the pruning error."""
    for seed in range(3):
        X = outlier_inputs(seed=seed)
        W = torch.randn(64, 128, generator=torch.Generator().manual_seed(10 + seed))
        pruned = run(SparseGPTConfig(pattern="2:4"), W, X)
        one_pass = run(SparseGPTConfig(pattern="2:4", quantize="fp8"), W, X)
        assert max_nonzeros_per_group(one_pass, 4) <= 2 and on_fp8_grid(one_pass)
        two_step = dequantize_fp8(*quantize_fp8(pruned))
        err = reconstruction_error(W, one_pass, X)
        assert err < reconstruction_error(W, two_step, X)
        assert err - reconstruction_error(W, pruned, X) < OUTPUT_ERROR_BOUND


def test_one_pass_leaves_headroom_for_the_weights_its_updates_grow():
    """A kept weight that absorbs a pruned neighbour's error grows past its row's dense maximum (here 3.5 = 448/128,
    exactly the top of its power-of-two scale): the pass's scales have SCALE_HEADROOM binades to spare, so it is
    not clipped back to 3.5."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 8, generator=g)
    X[:, 3] = X[:, 0] + 0.01 * torch.randn(4096, generator=g)  # column 3 can stand in for column 0
    W = torch.tensor([[0.9, 0.8, 0.1, 3.5, 0.5, 0.4, 0.3, 0.2]])
    one_pass = run(SparseGPTConfig(pattern="2:4", quantize="fp8"), W, X)
    # column 0 pruned, its 0.9 passed to column 3: 4.5 on the FP8 grid (the old scales clipped it at 3.5)
    assert one_pass[0, 0] == 0 and one_pass[0, 3] > 4.0 and on_fp8_grid(one_pass)


def test_quantize_option_is_checked():
    with pytest.raises(ValueError, match="unknown --quantize 'int4'"):
        SparseGPTConfig(pattern="2:4", quantize="int4")
    with pytest.raises(ValueError, match="activations"):
        FP8Config(activations="int8")
    with pytest.raises(ValueError, match="--percdamp"):
        FP8Config(percdamp=0.0)


def linears(model):
    adapter = get_adapter(model)
    return [op for layer in adapter.layers() for _, op in adapter.linears(layer)]


def test_prune_with_quantize_holds_the_one_pass_weights_as_fp8_bit_for_bit():
    """prunekit.prune with quantize="fp8" ends holding the column pass's weights as FP8: rounding weights that are
    on the FP8 grid gives them back bit for bit, so the layers compute what the pass left (weights-only here)."""
    import copy

    from prunekit.layerwise import prune_layerwise

    model, calib = tiny_llama(), random_windows()
    reference = copy.deepcopy(model)
    prune_layerwise(reference, SparseGPTConfig(pattern="2:4", quantize="fp8"), calib, progress=False)  # the pass alone
    prune(model, SparseGPTConfig(pattern="2:4", quantize="fp8"), calib, progress=False)
    assert all(isinstance(op, LinearFP8) for op in linears(model))
    assert all(torch.equal(op.dense_weight(), ref.weight) for op, ref in zip(linears(model), linears(reference)))
    assert quantize(model, FP8Config(compensate=False, activations="none")) is None  # only the activations change
    x = random_windows(2, 16)
    assert torch.allclose(model(x).logits, reference(x).logits, atol=1e-5)
    assert not isinstance(model.lm_head, LinearFP8)


def test_quantize_with_gptq_on_a_pruned_model_keeps_its_zeros():
    model, calib = tiny_llama(), random_windows()
    prune(model, MagnitudeConfig(pattern="2:4"), calib, progress=False)
    zeros = [op.weight == 0 for op in linears(model)]
    x = random_windows(2, 16)
    before = model(x).logits
    with pytest.raises(UsageError, match="needs calibration windows"):
        quantize(model, FP8Config())
    result = quantize(model, FP8Config(), calib, progress=False)
    assert len(result.operators) == 14 and all(op.recon_error < OUTPUT_ERROR_BOUND for op in result.operators)
    for op, zero in zip(linears(model), zeros):
        assert isinstance(op, LinearFP8) and op.activations == "fp8" and (op.weight.float() == 0)[zero].all()
        assert max_nonzeros_per_group(op.weight.float(), 4) <= 2
    assert ((model(x).logits - before).norm() / before.norm()) < 0.05
    with pytest.raises(UsageError, match="FP8 already"):
        quantize(model, FP8Config(), calib, progress=False)


def test_dtype_casts_keep_fp8_weights():
    layer = LinearFP8.from_linear(torch.nn.Linear(64, 32))
    Q, s = layer.weight.clone(), layer.weight_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.weight.view(torch.uint8), Q.view(torch.uint8)) and torch.equal(layer.weight_scale, s)
    assert layer.bias.dtype == torch.bfloat16
    assert layer(torch.randn(3, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_keep_n_of_m_weights_quantize_to_a_24_fp8_weight():
    W = torch.randn(16, 64)
    W = W.masked_fill(~keep_n_of_m(W.abs(), 2, 4), 0.0)
    Q, _ = quantize_fp8(W)
    assert max_nonzeros_per_group(Q.float(), 4) <= 2
