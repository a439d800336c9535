import pytest
import torch

from conftest import random_windows, tiny_llama, tiny_opt
from prunekit import MagnitudeConfig, SparseGPTConfig, WandaConfig, prune
from prunekit.export import is_compact, load_compact, save_compact
from prunekit.sparse import SparseLinear24
from prunekit.sparse import paths as path_log


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()]) if t.is_floating_point() else t


@pytest.mark.parametrize("factory,config,dtype", [
    (tiny_llama, SparseGPTConfig(pattern="2:4"), torch.float16),
    (tiny_opt, WandaConfig(0.6), torch.float32),
    (tiny_llama, MagnitudeConfig(0.02), torch.bfloat16),  # barely sparse: stays dense
])
def test_compact_round_trip_is_bit_exact(tmp_path, factory, config, dtype):
    model = factory()
    prune(model, config, random_windows(), progress=False)
    model = model.to(dtype)
    info = save_compact(model, tmp_path)
    assert is_compact(tmp_path)
    for sparse_modules in (False, True):
        reloaded = load_compact(tmp_path, sparse_modules=sparse_modules)
        original, restored = model.state_dict(), reloaded.state_dict()
        for name, tensor in original.items():
            if name in restored:
                assert torch.equal(bits(tensor), bits(restored[name])), name
        x = random_windows(2, 16)
        assert torch.allclose(model(x).logits.float(), reloaded(x).logits.float(), atol=1e-2)
        n_sparse = sum(isinstance(m, SparseLinear24) for m in reloaded.modules())
        expect = 14 if sparse_modules and str(config.pattern) == "2:4" else 0
        assert n_sparse == expect
    if str(config.pattern) == "2:4":
        assert info["bytes"] < 0.8 * info["dense_bytes"]


def test_tied_embeddings_are_stored_once(tmp_path):
    model = tiny_llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    save_compact(model, tmp_path)
    reloaded = load_compact(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_negative_zeros_round_trip_bit_exactly(tmp_path):
    """A model pruned as `w * mask` holds -0.0 entries: the compact format keeps them (bitmask, not 2:4, for
    those weights), and `load_compact(sparse_modules=True)` leaves such layers dense rather than flip their sign."""
    from prunekit.patterns import keep_n_of_m

    model = tiny_llama()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers"):
                module.weight.mul_(keep_n_of_m(module.weight.abs(), 2, 4))
    W = model.model.layers[0].mlp.up_proj.weight
    assert torch.signbit(W[W == 0]).any()
    save_compact(model, tmp_path)
    for sparse_modules in (False, True):
        reloaded = load_compact(tmp_path, sparse_modules=sparse_modules)
        for name, tensor in model.state_dict().items():
            assert torch.equal(bits(tensor), bits(reloaded.state_dict()[name])), name
        assert not any(isinstance(m, SparseLinear24) for m in reloaded.modules())


def test_sparse_modules_report_their_kernel_paths(tmp_path, monkeypatch, capsys):
    model = tiny_llama()
    prune(model, MagnitudeConfig(pattern="2:4"), random_windows(), progress=False)
    save_compact(model, tmp_path)
    monkeypatch.setenv("PRUNEKIT_LOG", "kernels")
    monkeypatch.setattr(path_log, "_LOGGED", set())  # earlier tests may have logged the same lines
    reloaded = load_compact(tmp_path, sparse_modules=True)
    assert set(reloaded.kernel_paths()) == {n for n, m in reloaded.named_modules() if isinstance(m, SparseLinear24)}
    reloaded(random_windows(1, 8))
    paths = reloaded.kernel_paths()
    assert len(paths) == 14 and all(p == {"cpu": ("dense", p["cpu"][1])} for p in paths.values())
    err = capsys.readouterr().err
    assert "prunekit: kernel model.layers.1.mlp.down_proj cpu: dense — CPU: no sparse kernel" in err
    assert err.count("prunekit: kernel ") == 14
