"""`import prunekit` teaches transformers to load compact directories: from_pretrained gives the model that
load_compact(sparse_modules=True) gives, tensor for tensor and logit for logit (CPU), and lm-eval's HFLM runs it."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import byte_tokenizer, random_windows, tiny_llama
from prunekit import FP8Config, MagnitudeConfig, SparseGPTConfig, WandaConfig, load_model, prune, quantize
from prunekit.export import COMPACT_FILE, load_compact, save_compact


def saved(path, config, fp8=False, dtype=torch.float32):
    model = tiny_llama()
    prune(model, config, random_windows(), progress=False)
    if fp8:
        quantize(model, FP8Config(compensate=False))
    save_compact(model.to(dtype), path, byte_tokenizer())
    return path


def raw_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.is_floating_point() else t


CASES = {  # name: (config, FP8, dtype, the scheme its linears are stored in)
    "2:4 bf16": (MagnitudeConfig(pattern="2:4"), False, torch.bfloat16, "2:4"),
    "2:4+fp8": (SparseGPTConfig(pattern="2:4", quantize="fp8"), True, torch.float32, "2:4+fp8"),
    "bitmask": (WandaConfig(0.6), False, torch.float32, "bitmask"),
    "bitmask+fp8": (SparseGPTConfig(0.6, quantize="fp8"), True, torch.float32, "bitmask+fp8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_from_pretrained_is_load_compact(tmp_path, case):
    from transformers import AutoModelForCausalLM

    config, fp8, dtype, scheme = CASES[case]
    directory = saved(tmp_path, config, fp8, dtype)
    quantization = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert quantization == {"quant_method": "prunekit", "format": "prunekit-compact", "version": "2" if fp8 else "1",
                            "schemes": {scheme: 14, "dense": 7}, "activations": "fp8" if fp8 else None}
    ours = load_compact(directory, sparse_modules=True)
    theirs = AutoModelForCausalLM.from_pretrained(directory)
    assert theirs.dtype == dtype
    assert [type(m) for m in theirs.modules()] == [type(m) for m in ours.modules()]
    state = ours.state_dict()
    assert list(theirs.state_dict()) == list(state)
    for name, tensor in theirs.state_dict().items():
        assert tensor.dtype == state[name].dtype and torch.equal(raw_bits(tensor), raw_bits(state[name])), name
    x = random_windows(2, 16)
    assert torch.equal(theirs(x).logits, ours(x).logits)
    prompt = x[:1, :4]
    assert torch.equal(theirs.generate(prompt, max_new_tokens=6, do_sample=False),
                       ours.generate(prompt, max_new_tokens=6, do_sample=False))
    assert set(theirs.kernel_paths()) == set(ours.kernel_paths())


def test_load_model_and_hflm_run_a_compact_fp8_model(tmp_path):
    """prunekit's own loader (what `prunekit eval` uses) and lm-eval's HFLM, given the directory, both run it."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from prunekit.quantize import LinearFP8

    directory = saved(tmp_path, SparseGPTConfig(pattern="2:4", quantize="fp8"), fp8=True)
    reference = load_compact(directory, sparse_modules=True)
    model, _ = load_model(str(directory))
    assert isinstance(model.model.layers[1].mlp.down_proj, LinearFP8)
    x = random_windows(2, 16)
    assert torch.equal(model(x).logits, reference(x).logits)
    requests = [Instance("loglikelihood", {}, ("The quick brown", " fox"), 0),
                Instance("loglikelihood", {}, ("Pack my box", " with five"), 1)]
    by_directory = HFLM(pretrained=str(directory), device="cpu", batch_size=2)
    by_model = HFLM(pretrained=reference, tokenizer=by_directory.tokenizer, device="cpu", batch_size=2)
    assert by_directory.loglikelihood(requests) == by_model.loglikelihood(requests)


def test_registration_waits_for_transformers(tmp_path):
    """`import prunekit` does not import transformers' quantizer registry; importing it later registers prunekit."""
    directory = saved(tmp_path, MagnitudeConfig(pattern="2:4"))
    code = ("import sys, prunekit; assert 'transformers.quantizers.auto' not in sys.modules; "
            "from transformers import AutoModelForCausalLM; "
            f"m = AutoModelForCausalLM.from_pretrained({str(directory)!r}); "
            "print(type(m.model.layers[0].mlp.up_proj).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "SparseLinear24"


def test_transformers_without_prunekit_refuses_a_compact_directory(tmp_path):
    """Without `import prunekit`, transformers skips the unknown quant_method; it then finds no weights file it
    knows (config.json names none) and raises, instead of building the model with its packed weights random."""
    directory = saved(tmp_path, MagnitudeConfig(pattern="2:4"))
    code = ("import sys; from transformers import AutoModelForCausalLM; assert 'prunekit' not in sys.modules; "
            f"AutoModelForCausalLM.from_pretrained({str(directory)!r}); print('loaded')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "loaded" not in out.stdout, out.stderr[-2000:]
    assert "Unknown quantization type, got prunekit" in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("OSError") and "no file named model.safetensors" in last, last


def test_directories_written_before_still_load(tmp_path):
    """A directory whose config.json names the compact file (`transformers_weights`, as prunekit wrote it before)
    loads with prunekit as one without it; save_compact never writes that key."""
    from transformers import AutoModelForCausalLM

    directory = saved(tmp_path, MagnitudeConfig(pattern="2:4"))
    config = json.loads((directory / "config.json").read_text())
    assert "transformers_weights" not in config
    x = random_windows(2, 16)
    expected = AutoModelForCausalLM.from_pretrained(directory)(x).logits
    (directory / "config.json").write_text(json.dumps({**config, "transformers_weights": COMPACT_FILE}))
    assert torch.equal(AutoModelForCausalLM.from_pretrained(directory)(x).logits, expected)
    assert torch.equal(load_compact(directory, sparse_modules=True)(x).logits, expected)
