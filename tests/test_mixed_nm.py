"""Mixed N:M (`--pattern mixed-N:M`): M fixed, each decoder layer pruned at its own N_l:M, exactly, by every
pruner; the N_l average N over all pruned weights; the compact format stores the 2:4 layers as 2:4 and reloads
the model bit for bit; refusals are one line naming the fix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import random_windows, run_cli, tiny_llama
from prunekit import RotPrunerConfig, WandaConfig, get_adapter, prune
from prunekit.allocation import layer_sizes
from prunekit.errors import UsageError
from prunekit.export import COMPACT_FILE, load_compact
from prunekit.layerwise import prune_layerwise
from prunekit.patterns import Pattern
from prunekit.pruners import PRUNERS
from prunekit.sparse import SparseLinear24


def group_counts(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Non-zeros in every group of M consecutive inputs."""
    return (weight != 0).reshape(weight.shape[0], -1, m).sum(dim=2)


def assert_exact_per_layer(model, N: list[int], n: int, m: int) -> None:
    """Every operator of layer l keeps exactly N_l of every M; the N_l average exactly N by layer size."""
    adapter = get_adapter(model)
    for N_l, layer in zip(N, adapter.layers(), strict=True):
        for name, op in adapter.linears(layer):
            counts = group_counts(op.weight.data, m)
            assert int(counts.max()) == int(counts.min()) == N_l, (name, N_l)
    sizes = layer_sizes(model)
    assert sum(s * k for s, k in zip(sizes, N)) == n * sum(sizes)


def test_parse_mixed_patterns():
    p = Pattern.parse("mixed-2:8")
    assert (p.n, p.m, p.mixed, p.is_nm, str(p)) == (2, 8, True, True, "mixed-2:8")
    assert p.sparsity(0.1) == 0.75 and p.of_layer(1 - 3 / 8) == Pattern(3, 8)
    assert Pattern.parse("2:4") == Pattern(2, 4) and not Pattern.parse("2:4").mixed
    with pytest.raises(UsageError, match="N < M"):
        Pattern.parse("mixed-4:4")
    with pytest.raises(UsageError, match="not a layer of mixed-2:8"):
        p.of_layer(0.7)


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_realises_each_layers_n_exactly(name):
    model = tiny_llama(layers=4)
    extra = {"iters": 4, "lam_steps": 2, "refit_iters": 4} if name == "fista" else {}
    config = PRUNERS[name](pattern="mixed-2:4", layer_sparsity="owl", owl_m=2, **extra)
    result = prune(model, config, random_windows(), progress=False)
    record = result.details["layer_sparsity"]["mixed"]
    assert record["pattern"] == "mixed-2:4" and len(set(record["N"])) > 1  # mixed indeed: 1:4, 2:4 and 3:4
    assert_exact_per_layer(model, record["N"], 2, 4)
    assert result.achieved_sparsity == 0.5


def test_mixed_two_eight_with_rmi():
    model = tiny_llama(layers=4)
    result = prune(model, WandaConfig(pattern="mixed-2:8", layer_sparsity="rmi"), random_windows(), progress=False)
    details = result.details["layer_sparsity"]
    assert details["delta"] == 1 / 8 and set(details["mixed"]["N"]) <= {1, 2, 3}
    assert len(set(details["mixed"]["N"])) > 1
    assert_exact_per_layer(model, details["mixed"]["N"], 2, 8)
    assert result.achieved_sparsity == 0.75


def test_explicit_layer_rates_and_their_checks():
    model = tiny_llama(layers=3)
    config = WandaConfig(pattern="mixed-2:4", layer_sparsity="owl")
    prune_layerwise(model, config, random_windows(), progress=False, layer_sparsity=[0.25, 0.5, 0.75])
    assert_exact_per_layer(model, [3, 2, 1], 2, 4)
    with pytest.raises(UsageError, match="not a layer of mixed-2:4"):
        prune_layerwise(tiny_llama(), config, random_windows(), progress=False, layer_sparsity=[0.4, 0.6])


def test_compact_format_stores_two_four_layers_as_two_four_and_reloads_bit_for_bit(tmp_path):
    model = tiny_llama(layers=4)
    result = prune(model, WandaConfig(pattern="mixed-2:4", layer_sparsity="owl", owl_m=2), random_windows(),
                   progress=False)
    N = result.details["layer_sparsity"]["mixed"]["N"]
    assert 2 in N and len(set(N)) > 1
    result.save(tmp_path / "out", save_format="compact")
    with safe_open(str(tmp_path / "out" / COMPACT_FILE), "pt") as f:
        layout = json.loads(f.metadata()["layout"])
    adapter = get_adapter(model)
    for index, layer in enumerate(adapter.layers()):
        for name, _ in adapter.linears(layer):
            scheme = layout[f"{adapter.layer_prefix(index)}.{name}.weight"]["scheme"]
            assert scheme == ("2:4" if N[index] == 2 else "bitmask"), (index, name, scheme)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pattern"] == "mixed-2:4" and report["details"]["layer_sparsity"]["mixed"]["N"] == N
    original = model.state_dict()
    for sparse_modules in (False, True):
        reloaded = load_compact(tmp_path / "out", sparse_modules=sparse_modules)
        restored = reloaded.state_dict()
        for name, tensor in original.items():
            if name in restored:
                assert torch.equal(tensor.view(torch.int32), restored[name].view(torch.int32)), name
        packed = sum(isinstance(module, SparseLinear24) for module in reloaded.modules())
        assert packed == (7 * N.count(2) if sparse_modules else 0)  # 7 operators in each 2:4 layer


def prune_args(model, text, out, *extra):
    return ["prune", "--model", model, "--calib-data", text, "--eval-data", "none", "--nsamples", 4, "--seqlen", 32,
            "--device", "cpu", "--quiet", "--output", out, *extra]


def test_cli_mixed_pattern_end_to_end(tiny_model_dir, text_file, tmp_path, capsys):
    code, _, err = run_cli(prune_args(tiny_model_dir, text_file, tmp_path / "out", "--method", "sparsegpt",
                                      "--pattern", "mixed-2:4", "--layer-sparsity", "owl", "--owl-m", 2), capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pattern"] == "mixed-2:4" and report["config"]["pattern"] == "mixed-2:4"
    N = report["details"]["layer_sparsity"]["mixed"]["N"]
    assert sorted(N) == [1, 3] and abs(report["achieved_sparsity"] - 0.5) < 1e-12


def test_mixed_run_resumes_from_its_checkpoint(tiny_model_dir, text_file, tmp_path, capsys):
    """The rates of the config's own allocation are recomputed, not fingerprinted: the same command with the same
    --checkpoint-dir is accepted again and gives the same weights."""
    args = ["--method", "wanda", "--pattern", "mixed-2:4", "--layer-sparsity", "owl", "--owl-m", 2,
            "--checkpoint-dir", tmp_path / "ckpt"]
    outputs = []
    for name in ("first", "again"):
        code, _, err = run_cli(prune_args(tiny_model_dir, text_file, tmp_path / name, *args), capsys)
        assert code == 0, err
        outputs.append(load_compact_or_hf(tmp_path / name))
    assert all(torch.equal(outputs[0][k], outputs[1][k]) for k in outputs[0])


def load_compact_or_hf(directory):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


@pytest.mark.parametrize("extra,message", [
    (["--pattern", "mixed-2:4"], "--pattern mixed-2:4 takes each layer's N from layer scores: add --layer-sparsity "
                                 "owl, rmi or sensitivity"),
    (["--pattern", "mixed-2:4", "--method", "rotpruner"], "--method rotpruner prunes every layer alike"),
    (["--pattern", "mixed-2:4", "--method", "losa", "--no-rmi"], "takes each layer's N from RMI: drop --no-rmi"),
    (["--pattern", "mixed-2:4", "--sparsity", 0.6, "--layer-sparsity", "owl"], "prunes 0.5 of the weights"),
    (["--pattern", "mixed-3:3"], "N < M"),
    (["--pattern", "mixed-3:4", "--layer-sparsity", "owl"], "every layer 3:4"),
    (["--pattern", "mixed-2:4", "--layer-sparsity", "owl", "--ignore", ".*down_proj"], "--ignore"),
    (["--pattern", "2:4", "--layer-sparsity", "owl"], "use --pattern unstructured or mixed-2:4"),
])
def test_refusals_are_one_line(tiny_model_dir, text_file, tmp_path, capsys, extra, message):
    code, _, err = run_cli(prune_args(tiny_model_dir, text_file, tmp_path / "never", *extra), capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def test_methods_that_prune_every_layer_alike_refuse_it_at_construction():
    with pytest.raises(ValueError, match="prunes every layer alike"):
        RotPrunerConfig(pattern="mixed-2:4")


def test_owl_band_is_one_step_of_n_unless_set():
    assert WandaConfig(pattern="mixed-2:8", layer_sparsity="owl").owl_lambda == 1 / 8
    assert WandaConfig(pattern="mixed-2:8", layer_sparsity="owl", owl_lambda=0.2).owl_lambda == 0.2
    assert WandaConfig(0.5, layer_sparsity="owl").owl_lambda == 0.08  # unstructured keeps OWL's own default
