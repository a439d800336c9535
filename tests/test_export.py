import pytest
import torch

from conftest import random_windows, tiny_llama, tiny_opt
from prunekit import MagnitudeConfig, SparseGPTConfig, WandaConfig, prune
from prunekit.export import is_compact, load_compact, save_compact
from prunekit.sparse import SparseLinear24


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
