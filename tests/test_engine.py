import pytest
import torch

from conftest import random_windows, tiny_gemma, tiny_llama, tiny_opt
from prunekit import FistaConfig, MagnitudeConfig, SparseGPTConfig, WandaConfig, get_adapter
from prunekit.checkpoints import checkpoint_file
from prunekit.engine import capture_inputs
from prunekit.layerwise import prune_layerwise
from prunekit.errors import UsageError
from prunekit.patterns import max_nonzeros_per_group


def pruned_ops(model):
    adapter = get_adapter(model)
    return [op for layer in adapter.layers() for _, op in adapter.linears(layer)]


@pytest.mark.parametrize("method", [MagnitudeConfig, WandaConfig, SparseGPTConfig])
@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_every_group_of_every_operator_is_n_m(tiny_model, method, pattern, n, m):
    result = prune_layerwise(tiny_model, method(pattern=pattern), random_windows(), progress=False)
    assert len(result.operators) == (6 if tiny_model.config.model_type == "opt" else 7) * 2
    for op in pruned_ops(tiny_model):
        assert max_nonzeros_per_group(op.weight.data, m) <= n


@pytest.mark.parametrize("method", [MagnitudeConfig, WandaConfig, SparseGPTConfig])
def test_unstructured_sparsity_within_one_weight_per_group(tiny_model, method):
    target = 0.37
    result = prune_layerwise(tiny_model, method(sparsity=target), random_windows(), progress=False)
    for op in pruned_ops(tiny_model):
        zeros = int((op.weight.data == 0).sum())
        rows, cols = op.weight.shape
        groups = rows if method is WandaConfig else (1 if method is MagnitudeConfig else -(-cols // 128))
        assert abs(zeros - target * rows * cols) <= groups
    assert abs(result.achieved_sparsity - target) < 0.01
    assert all(0 <= op.recon_error < 1 for op in result.operators)


def test_lm_head_and_embeddings_untouched():
    model = tiny_llama()
    head, emb = model.lm_head.weight.clone(), model.model.embed_tokens.weight.clone()
    prune_layerwise(model, WandaConfig(0.5), random_windows(), progress=False)
    assert torch.equal(model.lm_head.weight, head) and torch.equal(model.model.embed_tokens.weight, emb)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_opt, tiny_gemma])
def test_captured_inputs_reproduce_the_dense_forward(factory):
    """Running the layers on the captured inputs and kwargs gives the model's own hidden states."""
    model = factory()
    ids = random_windows(n=3)
    adapter = get_adapter(model)
    inputs = capture_inputs(adapter, ids, "cpu", batch_size=2, progress=False)
    expected = model(input_ids=ids, output_hidden_states=True).hidden_states
    h = inputs.hidden
    for i, layer in enumerate(adapter.layers()):
        assert torch.allclose(h, expected[i], atol=1e-5)
        h = layer(h, **inputs.kwargs[i])


def test_batch_size_does_not_change_the_result():
    a, b = tiny_llama(), tiny_llama()
    prune_layerwise(a, SparseGPTConfig(0.5), random_windows(n=5), batch_size=1, progress=False)
    prune_layerwise(b, SparseGPTConfig(0.5), random_windows(n=5), batch_size=4, progress=False)
    for pa, pb in zip(pruned_ops(a), pruned_ops(b)):
        assert torch.equal(pa.weight == 0, pb.weight == 0)
        assert torch.allclose(pa.weight, pb.weight, atol=1e-4)


def test_resume_from_checkpoint_gives_the_same_model(tmp_path):
    calib = random_windows()
    full = tiny_llama(layers=3)
    prune_layerwise(full, SparseGPTConfig(0.5), calib, progress=False)

    interrupted = tiny_llama(layers=3)
    layers = get_adapter(interrupted).layers()
    stop = layers[2].register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prune_layerwise(interrupted, SparseGPTConfig(0.5), calib, progress=False, checkpoint_dir=tmp_path)
    stop.remove()
    resumed = tiny_llama(layers=3)  # a fresh dense model: finished layers come from the checkpoint
    result = prune_layerwise(resumed, SparseGPTConfig(0.5), calib, progress=False, checkpoint_dir=tmp_path)
    assert len(result.operators) == 21
    for pa, pb in zip(pruned_ops(full), pruned_ops(resumed)):
        assert torch.equal(pa.weight, pb.weight)


@pytest.mark.parametrize("other,part", [
    (lambda: (tiny_llama(), WandaConfig(0.3), random_windows()), "method config"),
    (lambda: (tiny_llama(seed=1), WandaConfig(0.5), random_windows()), "model"),  # same shapes, other weights
    (lambda: (tiny_llama().to(torch.bfloat16), WandaConfig(0.5), random_windows()), "dtype"),
    (lambda: (tiny_llama(), WandaConfig(0.5), random_windows(seed=1)), "calibration data"),
])
def test_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path, other, part):
    prune_layerwise(tiny_llama(), WandaConfig(0.5), random_windows(), progress=False, checkpoint_dir=tmp_path)
    model, config, calib = other()
    with pytest.raises(UsageError, match=f"holds the progress of another run \\(its [^)]*{part}") as err:
        prune_layerwise(model, config, calib, progress=False, checkpoint_dir=tmp_path)
    assert "delete" in str(err.value)
    assert not any(int((op.weight == 0).sum()) for op in pruned_ops(model))  # nothing of the old run loaded


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing layer"])
def test_a_damaged_checkpoint_is_refused_with_the_hint_to_delete_it(tmp_path, damage):
    calib = random_windows()
    prune_layerwise(tiny_llama(), WandaConfig(0.5), calib, progress=False, checkpoint_dir=tmp_path)
    progress, layer = checkpoint_file(tmp_path, "progress.pt"), checkpoint_file(tmp_path, "layer_1.pt")
    if damage == "truncate":
        progress.write_bytes(progress.read_bytes()[:100])
    elif damage == "garbage":
        progress.write_bytes(b"not a checkpoint" * 10)
    else:
        layer.unlink()
    with pytest.raises(UsageError, match=f"(unreadable|missing|truncated).*delete {tmp_path} to start fresh"):
        prune_layerwise(tiny_llama(), WandaConfig(0.5), calib, progress=False, checkpoint_dir=tmp_path)


def test_bfloat16_model_prunes_with_fp32_statistics():
    model = tiny_llama().to(torch.bfloat16)
    result = prune_layerwise(model, SparseGPTConfig(pattern="2:4"), random_windows(), progress=False)
    assert all(op.weight.dtype == torch.bfloat16 for op in pruned_ops(model))
    assert all(max_nonzeros_per_group(op.weight.data, 4) <= 2 for op in pruned_ops(model))
    assert all(op.recon_error < 1 for op in result.operators)


def test_engine_takes_per_layer_sparsity():
    model = tiny_llama(layers=3)
    rates = [0.2, 0.5, 0.7]
    prune_layerwise(model, WandaConfig(0.5), random_windows(), progress=False, layer_sparsity=rates)
    adapter = get_adapter(model)
    for rate, layer in zip(rates, adapter.layers()):
        for _, op in adapter.linears(layer):
            rows, cols = op.weight.shape
            assert int((op.weight == 0).sum()) == rows * int(cols * rate)


def test_per_layer_sparsity_is_unstructured_only_and_one_per_layer():
    with pytest.raises(ValueError, match="unstructured"):
        prune_layerwise(tiny_llama(), WandaConfig(pattern="2:4"), random_windows(), progress=False,
                        layer_sparsity=[0.5, 0.5])
    with pytest.raises(ValueError, match="2 decoder layers"):
        prune_layerwise(tiny_llama(), WandaConfig(0.5), random_windows(), progress=False, layer_sparsity=[0.5])


@pytest.mark.parametrize("config", [
    WandaConfig(0.5),  # FISTA hands them out from its paired loop (prunekit.correction), in both modes
    FistaConfig(0.5, error_correction="intra", iters=4, lam_steps=2, refit_iters=4),
    FistaConfig(0.5, error_correction="intra+inter", iters=4, lam_steps=2, refit_iters=4),
], ids=["wanda", "fista-intra", "fista-intra+inter"])
def test_on_layer_done_sees_each_pruned_layers_outputs(config):
    model = tiny_llama(layers=3)
    calib = random_windows(n=3)
    seen = {}
    prune_layerwise(model, config, calib, progress=False,
                    on_layer_done=lambda i, hidden: seen.__setitem__(i, hidden.clone()))
    assert sorted(seen) == [0, 1, 2]
    with torch.no_grad():
        expected = model(input_ids=calib, output_hidden_states=True).hidden_states
    for i in range(2):  # the last hidden state of HF has the final norm applied
        assert torch.allclose(seen[i], expected[i + 1], atol=1e-5)
