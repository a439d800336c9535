"""The rotation-invariant model: folding keeps the function, and any orthonormal Q then keeps the logits."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from conftest import random_windows, tiny_gemma, tiny_llama, tiny_opt
from prunekit import UsageError, get_adapter
from prunekit.rotation import (RotatedForward, make_rotation_invariant, random_rotation, rotate_model,
                               residual_stream)


def with_random_norms(model, tie: bool = False):
    """Tiny models start with unit norm scales and zero biases, which would make folding trivial."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5) if name.endswith("weight") else p.normal_(0.0, 0.2)
    if tie:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


@pytest.fixture(params=["llama", "llama-tied", "opt"])
def model(request):
    if request.param == "opt":
        return with_random_norms(tiny_opt())
    return with_random_norms(tiny_llama(), tie=request.param == "llama-tied")


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_rotated_dense_model_keeps_its_logits(model):
    ids = random_windows(2, 24)
    before = logits(model, ids)
    stream = make_rotation_invariant(model)
    folded = logits(model, ids)
    Q = random_rotation(stream.width, stream.ones_fixed, seed=3)
    rotate_model(model, Q, stream)
    after = logits(model, ids)
    assert torch.allclose(folded, before, atol=1e-4, rtol=1e-4)
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)
    # the rotation really changed the weights, and the model is still the same class of HF model
    embed = model.get_submodule(stream.embeddings[0]).weight
    assert not torch.allclose(embed, type(model)(model.config).get_submodule(stream.embeddings[0]).weight)
    assert model.config.tie_word_embeddings is False


def test_rotation_without_folding_changes_the_logits(model):
    """The control: with the norm scales left in place the same rotation breaks the model."""
    ids = random_windows(2, 24)
    before = logits(model, ids)
    stream = residual_stream(model)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie only
    model._prunekit_rotation_invariant = True  # lie to rotate_model
    rotate_model(model, random_rotation(stream.width, stream.ones_fixed, seed=3), stream)
    assert (logits(model, ids) - before).abs().max() > 1e-2


def test_layernorm_needs_the_ones_direction_kept():
    model = with_random_norms(tiny_opt())
    ids = random_windows(2, 24)
    before = logits(model, ids)
    stream = make_rotation_invariant(model)
    assert stream.ones_fixed
    rotate_model(model, random_rotation(stream.width, fix_ones=False, seed=3), stream)
    assert (logits(model, ids) - before).abs().max() > 1e-2


def test_rotated_view_computes_the_fused_model(model):
    ids = random_windows(2, 24)
    stream = make_rotation_invariant(model)
    Q = random_rotation(stream.width, stream.ones_fixed, seed=5)
    view = RotatedForward(model, stream, get_adapter(model).backbone)
    with torch.no_grad():
        from_view = view.logits(view(ids, Q.float()))
    rotate_model(model, Q, stream)
    assert torch.allclose(from_view, logits(model, ids), atol=1e-4, rtol=1e-4)


def test_checkpointed_view_gives_the_same_loss_and_gradient(model, monkeypatch):
    """Layer checkpointing (each layer rotated and recomputed inside its own checkpoint) changes memory only:
    the same output and the same gradient of Q, with a masking transform like RotPruner's, and the layers
    are left as they were."""
    ids = random_windows(2, 24)
    stream = make_rotation_invariant(model)
    Q0 = random_rotation(stream.width, stream.ones_fixed, seed=5).float()

    def prune_half(path, W):
        keep = W.detach().abs() >= W.detach().abs().median()
        return W * keep

    import prunekit.models.recompute as recompute_module
    calls = []
    monkeypatch.setattr(recompute_module, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    results = []
    for checkpoint_layers in (False, True):
        Q = Q0.clone().requires_grad_(True)
        view = RotatedForward(model, stream, get_adapter(model).backbone, checkpoint_layers=checkpoint_layers)
        loss = view.logits(view(ids, Q, prune_half)).logsumexp(-1).mean()
        loss.backward()
        results.append((loss.detach(), Q.grad))
    assert len(calls) == len(get_adapter(model).layers())  # one checkpoint per layer, only when asked
    assert torch.equal(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert results[0][1].abs().max() > 0
    assert all("forward" not in vars(layer) for layer in get_adapter(model).layers())


def test_folding_is_idempotent(model):
    ids = random_windows(1, 16)
    make_rotation_invariant(model)
    once = logits(model, ids)
    make_rotation_invariant(model)
    assert torch.equal(once, logits(model, ids))


def test_gemma_is_refused():
    """Gemma 3's norms after attention and MLP see the blocks' outputs: folding would change the model."""
    with pytest.raises(UsageError, match="cannot be rotated"):
        make_rotation_invariant(tiny_gemma())
