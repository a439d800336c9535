import pytest
import torch
import torch.nn as nn

from conftest import random_windows, tiny_llama
from prunekit import WandaConfig, get_adapter
from prunekit.layerwise import prune_layerwise
from prunekit.methods.losa import LosaAdapters, LosaLinear


def pruned_linear(seed=0, out=24, inp=32, sparsity=0.6):
    torch.manual_seed(seed)
    base = nn.Linear(inp, out)
    W = base.weight.data
    k = int(W.numel() * sparsity)
    W.view(-1)[W.abs().flatten().argsort()[:k]] = 0.0
    return base


def train_some(layer, steps=5):
    """A few optimizer steps so that B is no longer zero."""
    opt = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=0.5)
    for _ in range(steps):
        layer(torch.randn(16, layer.base.in_features)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_merged_weights_keep_the_mask_exactly():
    base = pruned_linear()
    zeros = base.weight == 0
    layer = LosaLinear(base, rank=4, scaling=2.0)
    train_some(layer)
    assert layer.lora_B.abs().sum() > 0
    x = torch.randn(8, 32)
    expected = layer(x)
    merged = layer.merge()
    assert torch.equal(merged.weight == 0, zeros)  # every pruned weight still 0, every kept one non-zero
    assert torch.allclose(merged(x), expected, atol=1e-5)


def test_growing_the_rank_leaves_the_output_unchanged():
    layer = LosaLinear(pruned_linear(), rank=3, scaling=2.0)
    train_some(layer)
    x = torch.randn(8, 32)
    before = layer(x)
    layer.resize_rank(7)
    assert layer.lora_A.shape == (7, 32) and layer.lora_B.shape == (24, 7)
    assert torch.count_nonzero(layer.lora_B[:, 3:]) == 0 and torch.count_nonzero(layer.lora_A[3:]) > 0
    assert torch.allclose(layer(x), before, atol=1e-6)


def test_shrinking_keeps_the_leading_factors():
    layer = LosaLinear(pruned_linear(), rank=6, scaling=2.0)
    train_some(layer)
    A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    layer.resize_rank(2)
    assert torch.equal(layer.lora_A, A[:2]) and torch.equal(layer.lora_B, B[:, :2])


def test_dense_lora_is_plain_lora():
    base = pruned_linear()
    layer = LosaLinear(base, rank=4, scaling=2.0, masked=False)
    train_some(layer)
    x = torch.randn(8, 32)
    expected = base(x) + 2.0 * x @ (layer.lora_B @ layer.lora_A).t()
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert (layer.merge().weight == 0).sum() < (pruned_linear().weight == 0).sum()  # merging fills the zeros


def test_attach_after_pruning_the_merged_weights_keeps_the_model_output():
    """Stage boundaries: merge → prune → attach (unmerging the old factors from the new weights) must
    leave the pruned model's output as it was, while the factors carry over at new ranks."""
    model = tiny_llama()
    calib = random_windows()
    prune_layerwise(model, WandaConfig(0.3), calib, progress=False)
    adapters = LosaAdapters(model, scaling=2.0)
    adapters.attach([4, 4])
    for w in adapters.attached.values():
        train_some(w, steps=2)
    adapters.detach(merge=True)
    prune_layerwise(model, WandaConfig(0.5), calib, progress=False)
    with torch.no_grad():
        before = model(input_ids=calib).logits
    adapters.attach([2, 6])
    with torch.no_grad():
        after = model(input_ids=calib).logits
    assert torch.allclose(before, after, atol=1e-4)
    ranks = adapters.ranks()
    assert ranks["model.layers.0.self_attn.q_proj"] == 2 and ranks["model.layers.1.mlp.down_proj"] == 6
    adapter = get_adapter(model)
    assert all(isinstance(op, LosaLinear) for layer in adapter.layers() for _, op in adapter.linears(layer))
    check = adapters.detach(merge=True)
    assert check["nonzero_outside_mask"] == 0 and check["mask_zeros"] == check["merged_zeros"]


def test_rank_must_be_positive():
    with pytest.raises(ValueError):
        LosaLinear(pruned_linear(), rank=0, scaling=1.0)
