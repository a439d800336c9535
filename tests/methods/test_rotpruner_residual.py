"""RotPruner's residual rotations: any orthonormal A_g fused and installed leaves the dense model's logits
unchanged; the training view computes what the installed model computes; `none` is today's RotPruner; a pruned
model with residual rotations keeps exact 2:4 in every block's space and reloads (prunekit and transformers) with
the same logits; what cannot work is refused in one line."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import byte_tokenizer, random_windows, run_cli, save_tiny, tiny_llama, tiny_opt
from prunekit import RotPrunerConfig, get_adapter, load_model, prune
from prunekit.patterns import keep_n_of_m, max_nonzeros_per_group
from prunekit.rotation import (RotatedForward, make_rotation_invariant, orthonormality_error, random_rotation,
                               residual, rotate_model)

FAMILIES = {"llama": tiny_llama, "opt": tiny_opt}


def dense_model(family: str, layers: int = 3):
    """A tiny model in float64 with random norm scales and biases (unit scales would make folding trivial)."""
    model = FAMILIES[family](layers=layers).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5) if name.endswith("weight") else p.normal_(0.0, 0.2)
    return model


def random_rotations(model, kinds, share_every, seed=0):
    """(stream, blocks, Q, {g: A_g}): random orthonormal Q (1 kept fixed on LayerNorm models) and A_g."""
    stream = make_rotation_invariant(model)
    blocks = residual.blocks(model, kinds, share_every)
    Q = random_rotation(stream.width, stream.ones_fixed, seed=seed)
    A = {g: random_rotation(stream.width, seed=seed + 1 + i) for i, g in enumerate(residual.groups(blocks))}
    return stream, blocks, Q, A


#: float64 models, but transformers' RMSNorm normalises in float32: Q alone moves the logits by ~1e-7
TOL = dict(atol=1e-6, rtol=1e-6)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("share_every", [1, 2])
@pytest.mark.parametrize("choice", ["attn", "mlp", "both"])
def test_fused_and_installed_rotations_keep_the_dense_logits(family, choice, share_every):
    model = dense_model(family)
    ids = random_windows(2, 20)
    before = logits(model, ids)
    kinds = residual.kinds_of(choice)
    stream, blocks, Q, A = random_rotations(model, kinds, share_every)
    assert len(A) == len(kinds) * (2 if share_every == 2 else 3)  # 3 layers: groups {0, 1} or {0, 1, 2}
    rotate_model(model, Q, stream)
    residual.fuse(model, blocks, A)
    # the control: fused without the products, the model computes something else
    assert (logits(model, ids) - before).abs().max() > 1e-3
    residual.install(model, A, kinds, share_every)
    assert torch.allclose(logits(model, ids), before, **TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("checkpoint_layers", [False, True])
def test_training_view_is_the_installed_model(family, checkpoint_layers):
    """RotatedForward with Q and A (and a 2:4 mask on every rotated weight) computes the logits of the model with
    Q and A fused, the same masks applied and the products installed; gradients to A do not depend on
    checkpointing."""
    model = dense_model(family)
    ids = random_windows(2, 20)
    kinds = residual.kinds_of("both")
    stream, blocks, Q, A = random_rotations(model, kinds, 2, seed=3)
    adapter = get_adapter(model)

    def transform(path, W):
        return W * keep_n_of_m(W.detach().abs(), 2, 4)

    view = RotatedForward(model, stream, adapter.backbone, checkpoint_layers=checkpoint_layers, blocks=blocks)
    Q_, A_ = Q.clone().requires_grad_(), {g: a.clone().requires_grad_() for g, a in A.items()}
    trained = view.logits(view(ids, Q_, transform, A_))
    trained.pow(2).mean().backward()
    gradients = {g: a.grad for g, a in A_.items()}

    flat = RotatedForward(model, stream, adapter.backbone, checkpoint_layers=not checkpoint_layers, blocks=blocks)
    A2 = {g: a.clone().requires_grad_() for g, a in A.items()}
    flat.logits(flat(ids, Q.clone().requires_grad_(), transform, A2)).pow(2).mean().backward()
    for g in A:
        assert torch.allclose(gradients[g], A2[g].grad, atol=1e-12), g
        assert gradients[g].abs().max() > 0

    rotate_model(model, Q, stream)
    residual.fuse(model, blocks, A)
    with torch.no_grad():
        for layer in adapter.layers():
            for _, op in adapter.linears(layer):
                op.weight.copy_(transform("", op.weight))
    residual.install(model, A, kinds, 2)
    assert torch.allclose(logits(model, ids), trained.detach(), **TOL)


def test_none_is_todays_rotpruner(monkeypatch):
    """The default (`none`, share every 1) never reaches the residual code and gives the weights the same run
    gives without the new fields; the model stays a plain transformers model."""
    calib = random_windows(4, 32)
    settings = dict(pattern="2:4", base_pruner="wanda", steps=3, lr=0.05, train_samples=2)
    plain = tiny_llama()
    prune(plain, RotPrunerConfig(**settings), calib, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("residual code reached with --residual-rotations none")

    monkeypatch.setattr(residual, "fuse", refuse)
    monkeypatch.setattr(residual, "install", refuse)
    explicit = tiny_llama()
    prune(explicit, RotPrunerConfig(residual_rotations="none", share_every=1, **settings), calib, progress=False)
    state = plain.state_dict()
    assert list(explicit.state_dict()) == list(state)
    assert all(torch.equal(t, state[name]) for name, t in explicit.state_dict().items())
    assert not residual.has_residual_rotations(explicit) and not hasattr(explicit.config, "quantization_config")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in explicit.modules())


def test_end_to_end_saves_and_reloads(tmp_path):
    """2:4 with both residual rotations shared by 2 layers: exact 2:4 on every operator, orthonormal A's, and
    the saved model reloads through load_model and from_pretrained with the in-memory model's logits (and
    saves again)."""
    from transformers import AutoModelForCausalLM

    model = tiny_llama(layers=3)
    config = RotPrunerConfig(pattern="2:4", base_pruner="sparsegpt-noupdate", steps=3, lr=0.05, train_samples=2,
                             blocksize=16, residual_rotations="both", share_every=2)
    result = prune(model, config, random_windows(4, 32), progress=False)
    details = result.details["rotpruner"]["residual_rotations"]
    assert details["groups"] == 4 and details["blocks"] == 6
    assert min(details["distance_from_identity"].values()) > 0  # every A_g moved
    holder = model.residual_rotations
    assert sorted(name for name, _ in holder.named_buffers()) == ["attn_0", "attn_1", "mlp_0", "mlp_1"]
    assert max(orthonormality_error(A) for A in holder.buffers()) < 1e-5
    adapter = get_adapter(model)
    for layer in adapter.layers():
        for name, op in adapter.linears(layer):
            assert max_nonzeros_per_group(op.weight, 4) <= 2, name

    ids = random_windows(2, 24, seed=7)
    expected = logits(model, ids)
    report = result.save(tmp_path / "out")
    out = tmp_path / "out"
    assert report["saved"] == {"format": "hf"} and (out / "report.json").is_file()
    assert (out / residual.WEIGHTS_FILE).is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == residual.FORMAT
    byte_tokenizer().save_pretrained(out)  # load_model wants the tokenizer too

    loaded, _ = load_model(str(out))
    theirs = AutoModelForCausalLM.from_pretrained(out)
    for reloaded in (loaded, theirs):
        assert torch.equal(logits(reloaded, ids), expected)
    theirs.save_pretrained(tmp_path / "again")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "again"), ids), expected)


def test_transformers_without_prunekit_refuses(tmp_path):
    """Without `import prunekit` transformers skips an unknown quant_method with a warning and would load the model
    without its products; the weights' file name stops it."""
    model = dense_model("llama", layers=2).float()
    stream, blocks, Q, A = random_rotations(model, ("attn",), 1)
    rotate_model(model, Q, stream)
    residual.fuse(model, blocks, A)
    residual.install(model, A, ("attn",), 1)
    model.save_pretrained(tmp_path)
    code = f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "no file named model.safetensors" in plain.stderr


def test_cli_and_sharded_save(tmp_path, text_file, capsys):
    """Through the CLI: report.json, recipe.yaml and the saved model (sharded: the index is renamed) reload."""
    model_dir = save_tiny(tmp_path / "tiny")
    out = tmp_path / "rot"
    code, _, err = run_cli(["prune", "--model", model_dir, "--calib-data", text_file, "--eval-data", text_file,
                            "--nsamples", 4, "--seqlen", 32, "--eval-seqlen", 64, "--max-eval-segments", 2,
                            "--output", out, "--device", "cpu", "--quiet", "--method", "rotpruner", "--pattern", "2:4",
                            "--steps", 2, "--train-samples", 2, "--lr", 0.01, "--residual-rotations", "attn"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["residual_rotations"] == "attn" and report["details"]["rotpruner"]["residual_rotations"]
    assert "residual_rotations: attn" in (out / "recipe.yaml").read_text()
    model, _ = load_model(str(out))
    ids = random_windows(1, 16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / (residual.WEIGHTS_FILE + ".index.json")).is_file()
    from transformers import AutoModelForCausalLM

    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "sharded"), ids), logits(model, ids))


def test_swapped_writer_keeps_its_product():
    """A writer replaced by another module (as the 2:4 kernels, FP8 layers and LoRA wrappers do) keeps × A_gᵀ."""
    model = dense_model("llama", layers=2)
    ids = random_windows(2, 20)
    before = logits(model, ids)
    stream, blocks, Q, A = random_rotations(model, ("attn", "mlp"), 1)
    rotate_model(model, Q, stream)
    residual.fuse(model, blocks, A)
    residual.install(model, A, ("attn", "mlp"), 1)
    mlp = model.model.layers[1].mlp
    old = mlp.down_proj
    mlp.down_proj = torch.nn.Linear(old.in_features, old.out_features, bias=False, dtype=old.weight.dtype)
    mlp.down_proj.weight = old.weight
    assert torch.allclose(logits(model, ids), before, **TOL)


@pytest.mark.parametrize("extra,message", [
    (["--share-every", 0], "--share-every must be >= 1, got 0"),
    (["--residual-rotations", "ffn"], "--residual-rotations 'ffn': choose one of none, attn, mlp, both"),
    (["--share-every", 4], "--share-every 4 shares residual rotations: add --residual-rotations"),
    (["--residual-rotations", "both", "--save-format", "compact"], "the compact format does not store"),
    (["--method", "wanda", "--residual-rotations", "both"], "--residual-rotations does not apply to --method wanda"),
    (["--model", "gemma", "--residual-rotations", "both"], "cannot be rotated"),
])
def test_bad_input_is_one_line(tmp_path, text_file, capsys, extra, message):
    if "gemma" in extra:
        extra = ["--model", save_tiny(tmp_path / "gemma", "gemma"), *extra[2:]]
    argv = ["prune", "--model", save_tiny(tmp_path / "tiny"), "--calib-data", text_file, "--eval-data", "none",
            "--nsamples", 2, "--seqlen", 32, "--eval-seqlen", 64, "--output", tmp_path / "out", "--device", "cpu", "--quiet",
            "--method", "rotpruner", "--pattern", "2:4", "--steps", 1]
    if "--method" in extra:
        argv = argv[:argv.index("--method")] + ["--pattern", "2:4"]
    argv += [str(a) for a in extra]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_rotated_twice_is_refused():
    model = dense_model("llama", layers=2)
    stream, blocks, Q, A = random_rotations(model, ("attn",), 1)
    rotate_model(model, Q, stream)
    residual.fuse(model, blocks, A)
    residual.install(model, A, ("attn",), 1)
    from prunekit import UsageError

    with pytest.raises(UsageError, match="already carries residual rotations"):
        RotPrunerConfig().check_model(model)
