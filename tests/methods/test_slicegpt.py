"""SliceGPT and RotPruner-structured: slicing 0 keeps the model's function, the sliced shapes and
parameter counts, generate, the sliced save format, the CLI, and learning the bases."""

import json

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from conftest import random_windows, save_tiny, tiny_llama, tiny_opt
from prunekit import RotPrunerStructuredConfig, SliceGPTConfig, UsageError, load_model, prune
from prunekit.cli import main
from prunekit.methods.slicegpt.pca import sliced_width


def _scaled_norms(model):
    """Random norm scales, so that folding them matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) + 0.5)
    return model


def test_slicing_zero_keeps_the_logits():
    model = _scaled_norms(tiny_llama())
    ids = random_windows(3, 24, seed=5)
    with torch.no_grad():
        dense = model(ids).logits
    prune(model, SliceGPTConfig(slicing=0.0), random_windows(4, 32), progress=False)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense, atol=1e-4)


def test_sliced_shapes_parameters_forward_and_generate():
    model = _scaled_norms(tiny_llama())
    result = prune(model, SliceGPTConfig(slicing=0.25), random_windows(4, 32), progress=False)
    k = 48  # 64 · 0.75
    assert model.model.embed_tokens.weight.shape == (256, k) and model.lm_head.weight.shape == (256, k)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.weight.shape == (64, k) and attn.k_proj.weight.shape == (32, k)
        assert attn.o_proj.weight.shape == (k, 64)
        assert mlp.gate_proj.weight.shape == (128, k) and mlp.down_proj.weight.shape == (k, 128)
        assert layer.attn_shortcut.shape == (k, k) and layer.mlp_shortcut.shape == (k, k)
    details = result.details["slicegpt"]
    assert details["format"]["dims"] == [k] * 5
    assert details["parameters_after"] < details["parameters_before"]
    assert abs(result.achieved_sparsity - (1 - details["parameters_after"] / details["parameters_before"])) < 1e-12
    ids = random_windows(2, 16, seed=3)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    out = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def test_save_and_load_round_trip(tmp_path):
    from prunekit.export import save_sliced
    from conftest import byte_tokenizer

    model = _scaled_norms(tiny_llama())
    prune(model, SliceGPTConfig(slicing=0.3, round_to=4), random_windows(4, 32), progress=False)
    save_sliced(model, tmp_path, byte_tokenizer())
    assert "prunekit_sliced" in json.loads((tmp_path / "config.json").read_text())
    loaded, _ = load_model(str(tmp_path))
    ids = random_windows(2, 24, seed=7)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_sliced_width():
    assert sliced_width(64, 0.25, 8) == 48 and sliced_width(576, 0.2, 8) == 464 and sliced_width(576, 0.0, 8) == 576
    assert sliced_width(64, 0.99, 8) == 8


@pytest.mark.parametrize("slicing", [1.2, -0.1, 1.0])
def test_bad_slicing_is_refused(slicing):
    with pytest.raises(ValueError, match="--slicing must lie in"):
        SliceGPTConfig(slicing=slicing)


def test_opt_is_refused():
    with pytest.raises(UsageError, match="Llama family"):
        prune(tiny_opt(), SliceGPTConfig(slicing=0.2), random_windows(2, 16), progress=False)


def _argv(model_dir, text_file, out, *extra):
    argv = ["prune", "--model", model_dir, "--calib-data", text_file, "--eval-data", text_file,
            "--nsamples", 4, "--seqlen", 32, "--eval-seqlen", 64, "--max-eval-segments", 2, "--output", out,
            "--device", "cpu", "--quiet", *extra]
    return [str(a) for a in argv]


def test_cli_slicegpt(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "sliced"
    assert main(_argv(tiny_model_dir, text_file, out, "--method", "slicegpt", "--slicing", "0.25")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "slicegpt" and report["saved"]["format"] == "sliced"
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert set(report["ppl"]) == {"dense", "pruned"}
    # reported as structured: what was sliced and how many parameters went, no "sparsity" of a pattern
    before, after = report["parameters"]["before"], report["parameters"]["after"]
    assert report["pattern"] == "structured" and report["target_sparsity"] is None
    assert report["structured"] == {"removes": "slicing", "target": 0.25, "parameters_removed": 1 - after / before}
    assert "slicegpt structured (slicing 0.2500)" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--eval-data", str(text_file), "--eval-seqlen", "64",
                 "--max-eval-segments", "2", "--quiet", "--json"]) == 0
    ppl = json.loads(capsys.readouterr().out)["ppl"]
    assert abs(list(ppl.values())[0] - list(report["ppl"]["pruned"].values())[0]) < 1e-3
    for bad in ("1.2", "-0.1"):
        target = tmp_path / f"bad{bad}"
        code = main(_argv(tiny_model_dir, text_file, target, "--method", "slicegpt", "--slicing", bad))
        err = capsys.readouterr().err
        assert code == 2 and "--slicing must lie in" in err and len(err.strip().splitlines()) == 1
        assert not target.exists()


def test_cli_rotpruner_pattern_structured(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "rps"
    argv = _argv(tiny_model_dir, text_file, out, "--method", "rotpruner", "--pattern", "structured",
                 "--slicing", "0.25", "--steps", "1", "--skip-dense-eval")
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "rotpruner-structured" and report["saved"]["format"] == "sliced"
    assert report["pattern"] == "structured" and report["structured"]["removes"] == "slicing"
    assert "rotpruner-structured structured (slicing 0.2500)" in capsys.readouterr().out
    target = tmp_path / "wanda-structured"
    code = main(_argv(tiny_model_dir, text_file, target, "--method", "wanda", "--pattern", "structured"))
    err = capsys.readouterr().err
    assert code == 2 and "--pattern structured" in err and len(err.strip().splitlines()) == 1 and not target.exists()


def test_cli_refuses_opt(tmp_path, text_file, capsys):
    model_dir = save_tiny(tmp_path / "opt", "opt")
    out = tmp_path / "out"
    code = main(_argv(model_dir, text_file, out, "--method", "slicegpt", "--slicing", "0.2", "--skip-dense-eval"))
    err = capsys.readouterr().err
    assert code == 2 and "Llama family" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_rotpruner_structured_learns_orthonormal_bases():
    calib = random_windows(2, 32)
    reference = tiny_llama(layers=1)
    prune(reference, SliceGPTConfig(slicing=0.25), calib, progress=False)
    model = tiny_llama(layers=1)
    config = RotPrunerStructuredConfig(slicing=0.25, steps=30, lr=0.05, optimizer="cayley-adam", schedule="constant",
                                       train_samples=1)
    result = prune(model, config, calib, progress=False)
    details = result.details["rotpruner-structured"]
    assert details["max_orthonormality_error"] < 1e-6 and details["max_distance_from_pca"] > 0
    training = details["training"]
    assert training["steps"] == 30 and training["loss_last"] < 0.9 * training["loss_first"]
    shapes = {n: p.shape for n, p in reference.named_parameters()}
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    with torch.no_grad():
        assert torch.isfinite(model(calib).logits).all()


def test_rotpruner_structured_starts_at_slicegpt():
    """With a zero learning rate the learned model is SliceGPT's, and the training loss is its KL."""
    calib = random_windows(2, 32)
    a, b = _scaled_norms(tiny_llama(layers=1)), _scaled_norms(tiny_llama(layers=1))
    with torch.no_grad():
        dense = torch.log_softmax(a(calib[:1]).logits, -1)
    prune(a, SliceGPTConfig(slicing=0.25), calib, progress=False)
    config = RotPrunerStructuredConfig(slicing=0.25, steps=1, lr=1e-12, train_samples=1, schedule="constant")
    result = prune(b, config, calib, progress=False)
    with torch.no_grad():
        la, lb = a(calib).logits, b(calib).logits
        kl = torch.nn.functional.kl_div(torch.log_softmax(la[:1], -1), dense, log_target=True, reduction="sum") / 32
    assert torch.allclose(la, lb, atol=1e-4)
    assert abs(result.details["rotpruner-structured"]["training"]["loss_first"] - float(kl)) < 1e-4


def _tied_llama(layers: int = 2):
    from transformers import LlamaForCausalLM

    config = tiny_llama(layers=layers).config
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    return _scaled_norms(LlamaForCausalLM(config).eval())


def test_tied_embeddings_stay_whole(tmp_path):
    from conftest import byte_tokenizer
    from prunekit.export import save_sliced

    ids = random_windows(2, 24, seed=7)
    model = _tied_llama()
    with torch.no_grad():
        dense = model(ids).logits
    prune(model, SliceGPTConfig(slicing=0.0), random_windows(4, 32), progress=False)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense, atol=1e-4)

    tied, untied = _tied_llama(), _tied_llama()
    before = sum(p.numel() for p in tied.parameters())
    a = prune(tied, SliceGPTConfig(slicing=0.25), random_windows(4, 32), progress=False).details["slicegpt"]
    b = prune(untied, SliceGPTConfig(slicing=0.25, keep_tied=False), random_windows(4, 32),
              progress=False).details["slicegpt"]
    assert a["tied_embeddings_kept"] and not b["tied_embeddings_kept"]
    assert a["parameters_before"] == before and a["parameters_after"] < b["parameters_after"]
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and tied.lm_head.weight.shape == (256, 64)
    assert untied.lm_head.weight.shape == (256, 48)
    save_sliced(tied, tmp_path, byte_tokenizer())
    loaded, _ = load_model(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tied(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_rotpruner_structured_tied_starts_at_slicegpt():
    calib = random_windows(2, 32)
    a, b = _tied_llama(1), _tied_llama(1)
    prune(a, SliceGPTConfig(slicing=0.25), calib, progress=False)
    config = RotPrunerStructuredConfig(slicing=0.25, steps=1, lr=1e-12, train_samples=1, schedule="constant")
    prune(b, config, calib, progress=False)
    with torch.no_grad():
        assert torch.allclose(a(calib).logits, b(calib).logits, atol=1e-4)


def test_shared_layer_basis(tmp_path):
    """One basis per layer: slicing 0 keeps the logits, no attention shortcut, k² fewer parameters per layer
    than per-block bases (and other logits), and the saved model reloads with the same logits."""
    from conftest import byte_tokenizer
    from prunekit.export import save_sliced

    ids, calib = random_windows(2, 24, seed=7), random_windows(4, 32)
    model = _tied_llama()
    with torch.no_grad():
        dense = model(ids).logits
    prune(model, SliceGPTConfig(slicing=0.0, shared_layer_basis=True), calib, progress=False)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense, atol=1e-4)

    shared, per_block = _tied_llama(), _tied_llama()
    a = prune(shared, SliceGPTConfig(slicing=0.25, shared_layer_basis=True), calib, progress=False).details["slicegpt"]
    b = prune(per_block, SliceGPTConfig(slicing=0.25), calib, progress=False).details["slicegpt"]
    k, layers = 48, len(shared.model.layers)
    assert a["shared_layer_basis"] and a["format"]["shared_layer_basis"]
    assert all(layer.attn_shortcut is None and layer.mlp_shortcut.shape == (k, k) for layer in shared.model.layers)
    assert b["parameters_after"] - a["parameters_after"] == layers * k * k
    with torch.no_grad():
        out_shared, out_per_block = shared(ids).logits, per_block(ids).logits
    assert torch.isfinite(out_shared).all() and not torch.allclose(out_shared, out_per_block, atol=1e-3)
    save_sliced(shared, tmp_path, byte_tokenizer())
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert not any("attn_shortcut" in n for n in names) and any("mlp_shortcut" in n for n in names)
    loaded, _ = load_model(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out_shared)


def test_rotpruner_structured_shared_basis_is_one_frame():
    """Learning with a shared layer basis keeps U_m^l = U_a^l (one Stiefel parameter per layer)."""
    calib = random_windows(2, 32)
    a, b = _tied_llama(1), _tied_llama(1)
    prune(a, SliceGPTConfig(slicing=0.25, shared_layer_basis=True), calib, progress=False)
    config = RotPrunerStructuredConfig(slicing=0.25, steps=1, lr=1e-12, train_samples=1, schedule="constant",
                                       shared_layer_basis=True)
    prune(b, config, calib, progress=False)
    with torch.no_grad():
        assert torch.allclose(a(calib).logits, b(calib).logits, atol=1e-4)
    c = _tied_llama(1)
    config = RotPrunerStructuredConfig(slicing=0.25, steps=5, lr=0.05, train_samples=1, schedule="constant",
                                       shared_layer_basis=True)
    details = prune(c, config, calib, progress=False).details["rotpruner-structured"]
    assert details["max_orthonormality_error"] < 1e-6 and c.model.layers[0].attn_shortcut is None


def test_slicing_is_not_sparsity():
    """SliceGPT leaves no zeros: its config refuses --sparsity and says so."""
    from prunekit import SliceGPTConfig

    with pytest.raises(ValueError, match="use --slicing, not --sparsity"):
        SliceGPTConfig(sparsity=0.3)
    assert SliceGPTConfig(slicing=0.3).sparsity == 0.0


def _first_step(model, monkeypatch, **config):
    """learn_bases' first loss and the bases' gradients then (recorded at the optimizer's step)."""
    from prunekit.methods.slicegpt import train

    grads, make = [], train.make_optimizer

    def recording(name, params, *args):
        optimizer = make(name, params, *args)
        optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in params]))
        return optimizer

    monkeypatch.setattr(train, "make_optimizer", recording)
    config = RotPrunerStructuredConfig(slicing=0.25, steps=1, train_samples=2, train_batch=2, **config)
    details = prune(model, config, random_windows(2, 32), progress=False).details["rotpruner-structured"]
    return details["training"]["loss"][0], grads[0]


@pytest.mark.parametrize("tied,shared", [(False, False), (True, False), (True, True), (False, True)])
def test_checkpointed_layers_give_the_same_step(tied, shared, monkeypatch):
    """Each layer checkpointed, its sliced weights computed inside: the same loss and, up to the summation
    order, the same gradients of the bases as every layer's weights held for the backward pass."""
    import prunekit.models.recompute as recompute

    calls = []
    monkeypatch.setattr(recompute, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    make = (lambda: _tied_llama(2)) if tied else (lambda: _scaled_norms(tiny_llama(layers=2)))
    loss, grads = _first_step(make(), monkeypatch, shared_layer_basis=shared, checkpoint_layers=True)
    checkpointed = len(calls)
    loss_ref, grads_ref = _first_step(make(), monkeypatch, shared_layer_basis=shared, checkpoint_layers=False)
    assert checkpointed >= 2 and len(calls) == checkpointed  # every layer checkpointed, and only with the flag
    assert loss == loss_ref and len(grads) == len(grads_ref) == (3 if shared else 5)
    for g, ref in zip(grads, grads_ref):
        assert ref.abs().max() > 0 and (g - ref).norm() <= 1e-6 * ref.norm()


def test_checkpointed_layers_learn_the_same_bases():
    """A whole run with and without checkpointing: the same sliced model, up to rounding."""
    calib = random_windows(2, 32)
    models = {flag: _tied_llama(2) for flag in (True, False)}
    for flag, model in models.items():
        config = RotPrunerStructuredConfig(slicing=0.25, steps=4, lr=0.05, train_samples=2, checkpoint_layers=flag)
        prune(model, config, calib, progress=False)
    on, off = (dict(models[flag].named_parameters()) for flag in (True, False))
    assert on.keys() == off.keys() and all(torch.allclose(on[n], off[n], atol=1e-6) for n in on)
