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
        assert info["bytes"] < info["dense_bytes"]  # FP8 weights counted at one byte: only the packing saves here


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


def fp8_model(pattern="2:4", activations="fp8"):
    """A tiny Llama pruned (SparseGPT, quantizing in its column pass) and held as FP8 layers."""
    from prunekit import FP8Config, quantize

    model = tiny_llama()
    prune(model, SparseGPTConfig(0.5, pattern, quantize="fp8"), random_windows(), progress=False)
    quantize(model, FP8Config(compensate=False, activations=activations))
    return model


def fp8_state(model):
    """{name: (Q bytes, scale, activations)} of every FP8 layer, whichever module holds it."""
    from prunekit.quantize import LinearFP8
    from prunekit.sparse.linear_fp8 import SparseLinear24FP8

    state = {}
    for name, m in model.named_modules():
        if isinstance(m, SparseLinear24FP8):
            state[name] = (m.fp8_weight().view(torch.uint8), m.weight_scale, m.activations)
        elif isinstance(m, LinearFP8):
            state[name] = (m.weight.view(torch.uint8), m.weight_scale, m.activations)
    return state


@pytest.mark.parametrize("pattern,scheme,dtype", [("2:4", "2:4+fp8", torch.bfloat16),
                                                 ("unstructured", "bitmask+fp8", torch.float32)])
def test_fp8_round_trip_is_bit_exact(tmp_path, pattern, scheme, dtype):
    """Every FP8 layer comes back with the same Q bytes, scales and activations, packed (SparseLinear24FP8) or not
    (LinearFP8); every other tensor bit for bit; the same logits (in bf16: the two loaded forms agree, the model in
    memory has its rotary table cast to bf16, the loaded one computes it)."""
    import json

    from prunekit.quantize import LinearFP8
    from prunekit.sparse.linear_fp8 import SparseLinear24FP8

    model = fp8_model(pattern).to(dtype)
    info = save_compact(model, tmp_path)
    schemes = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["schemes"]
    assert schemes[scheme] == 14
    expected = fp8_state(model)
    x = random_windows(2, 16)
    logits = []
    for sparse_modules in (False, True):
        reloaded = load_compact(tmp_path, sparse_modules=sparse_modules)
        restored = fp8_state(reloaded)
        assert restored.keys() == expected.keys()
        for name, (q, scale, activations) in expected.items():
            r_q, r_scale, r_activations = restored[name]
            assert torch.equal(q, r_q) and torch.equal(scale, r_scale) and activations == r_activations, name
        packed = sparse_modules and scheme == "2:4+fp8"
        assert sum(isinstance(m, SparseLinear24FP8) for m in reloaded.modules()) == (14 if packed else 0)
        assert sum(type(m) is LinearFP8 for m in reloaded.modules()) == (0 if packed else 14)
        for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            assert torch.equal(bits(reloaded.state_dict()[name]), bits(model.state_dict()[name])), name
        logits.append(reloaded(x).logits)
    assert torch.equal(logits[0], logits[1])
    if dtype == torch.float32:
        assert torch.equal(logits[0], model(x).logits)
    assert info["bytes"] < info["dense_bytes"]  # FP8 weights counted at one byte: only the packing saves here


def test_fp8_dense_scheme_and_weight_only_activations(tmp_path):
    """A barely pruned FP8 weight is stored dense ("fp8"); activations "none" (weights only) is kept per layer."""
    model = fp8_model("unstructured", activations="none")
    with torch.no_grad():
        layer = model.model.layers[0].mlp.up_proj
        layer.weight.copy_(torch.randn(layer.weight.shape).to(layer.weight.dtype))  # dense again
    save_compact(model, tmp_path)
    reloaded = load_compact(tmp_path, sparse_modules=True)
    assert fp8_state(reloaded).keys() == fp8_state(model).keys()
    assert all(a == "none" for _, _, a in fp8_state(reloaded).values())
    x = random_windows(2, 16)
    assert torch.equal(model(x).logits, reloaded(x).logits)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.prunekit.safetensors", "pt") as f:
        layout = __import__("json").loads(f.metadata()["layout"])
        assert f.metadata()["version"] == "2"
    assert layout["model.layers.0.mlp.up_proj.weight"]["scheme"] == "fp8"
    assert layout["model.layers.0.mlp.down_proj.weight"] == {"scheme": "bitmask+fp8", "shape": [64, 128],
                                                             "dtype": "float8_e4m3fn", "activations": "none"}


def test_version_1_files_still_load_and_newer_ones_are_refused(tmp_path):
    """A file without FP8 weights is written as version 1, exactly as before; one written before config.json had
    `quantization_config` loads too; a version this prunekit does not know is refused with what to do."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tiny_llama()
    prune(model, MagnitudeConfig(pattern="2:4"), random_windows(), progress=False)
    save_compact(model, tmp_path)
    path = tmp_path / "model.prunekit.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    assert metadata["version"] == "1"
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]  # as an older prunekit wrote it
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = load_compact(tmp_path, sparse_modules=True)
    assert not hasattr(reloaded.config, "quantization_config")
    x = random_windows(2, 16)
    assert torch.equal(reloaded(x).logits, model(x).logits)
    save_file(load_file(path), path, metadata={**metadata, "version": "3"})
    with pytest.raises(ValueError, match="version 3; this prunekit reads versions 1, 2: upgrade prunekit"):
        load_compact(tmp_path)
