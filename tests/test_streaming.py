"""--offload disk: a sharded model pruned one layer at a time from disk gives the same weights, bit for bit, as
the same model pruned in memory, with at most one decoder layer in memory at once; its output is a sharded
Hugging Face directory that loads with from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import random_windows, run_cli, save_tiny, write_arc
from reliability.conftest import assert_bit_identical, weights

from prunekit.eval.perplexity import perplexity
from prunekit.streaming import layer_store, load_streamed


def save_sharded(path, family="llama", layers=4):
    """A tiny model saved in many small shards (every layer split across files), with its tokenizer."""
    save_tiny(path, family, add_bos=family == "gemma", layers=layers, max_shard_size="40KB")
    assert len(list(path.glob("*.safetensors"))) > layers
    return path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return save_sharded(tmp_path_factory.mktemp("sharded") / "llama")


def prune_args(model, text, out, *extra):
    return ["prune", "--model", model, "--calib-data", text, "--eval-data", text, "--nsamples", 4, "--seqlen", 32,
            "--eval-seqlen", 64, "--max-eval-segments", 2, "--device", "cpu", "--quiet", "--output", out, *extra]


@pytest.mark.parametrize("method", [["--method", "wanda"], ["--method", "sparsegpt", "--pattern", "2:4"],
                                    ["--method", "fista", "--iters", "5", "--lam-steps", "3"]])
def test_disk_offload_prunes_the_same_weights(sharded, text_file, tmp_path, capsys, method):
    streamed, held = tmp_path / "disk", tmp_path / "none"
    assert run_cli(prune_args(sharded, text_file, streamed, "--offload", "disk", *method), capsys)[0] == 0
    assert run_cli(prune_args(sharded, text_file, held, "--offload", "none", *method), capsys)[0] == 0
    assert_bit_identical(streamed, held)
    a, b = (json.loads((d / "report.json").read_text()) for d in (streamed, held))
    assert a["ppl"] == b["ppl"] and a["offload"] == "disk" and b["offload"] == "none"
    assert a["layers"] == [{**op, "seconds": a_op["seconds"]} for op, a_op in zip(b["layers"], a["layers"])]
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(weights(streamed))
    assert not (streamed / ".layers").exists()


def test_streamed_output_loads_with_from_pretrained(sharded, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    assert run_cli(prune_args(sharded, text_file, out, "--offload", "disk", "--method", "magnitude"), capsys)[0] == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    q = model.model.layers[3].self_attn.q_proj.weight
    assert (q == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    ids = random_windows(1, 16)
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_streamed_perplexity_equals_in_memory(tmp_path, family):
    path = save_sharded(tmp_path / family, family, layers=2)
    from transformers import AutoModelForCausalLM

    held = AutoModelForCausalLM.from_pretrained(path).eval()
    streamed = load_streamed(path, torch.float32)
    windows = random_windows(3, 40)
    assert perplexity(streamed, windows) == perplexity(held, windows)
    assert layer_store(streamed).peak_loaded == 1


def test_streamed_walk_holds_one_layer_at_a_time(sharded):
    import prunekit
    from prunekit.methods import config_class

    model = load_streamed(sharded, torch.float32)
    result = prunekit.prune(model, config_class("wanda")(sparsity=0.5), random_windows(4, 32), progress=False)
    store = layer_store(model)
    assert store.peak_loaded == 1 and len(store.written) == 4
    assert all(p.is_meta for layer in store.adapter.layers() for p in layer.parameters())
    assert result.achieved_sparsity == pytest.approx(0.5, abs=1e-3)


def test_disk_offload_refusals(sharded, text_file, tmp_path, capsys):
    code, _, err = run_cli(prune_args(sharded, text_file, tmp_path / "a", "--offload", "disk", "--method", "slicegpt"),
                           capsys)
    assert code == 2 and "--offload disk is not supported by --method slicegpt" in err
    code, _, err = run_cli(prune_args(sharded, text_file, tmp_path / "b", "--offload", "disk", "--save-format", "compact"),
                           capsys)
    assert code == 2 and "drop --save-format compact" in err and not (tmp_path / "b").exists()
    tasks = write_arc(tmp_path / "tasks")
    code, _, err = run_cli(prune_args(sharded, text_file, tmp_path / "c", "--offload", "disk", "--eval-tasks", "arc_easy",
                                      "--task-data", tasks), capsys)
    assert code == 2 and "zero-shot tasks need the whole model in memory" in err
    assert not (tmp_path / "c").exists()
    code, _, err = run_cli(prune_args(sharded, text_file, tmp_path / "d", "--offload", "disk", "--sparsity", 0.7,
                                      "--layer-sparsity", "sensitivity"), capsys)
    assert code == 2 and "load the model in memory (drop --offload disk)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
