"""The pruner contract: a pruner written as a score function alone — here, in this file — runs under the
layer-wise engine with N:M, resumes from a checkpoint, and serves as the base of RotPruner and LoSA without
touching their code. RIA, a registered pruner, goes through the same paths."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from conftest import TEXT, byte_tokenizer, random_windows, run_cli, tiny_llama
from prunekit import RotPrunerConfig, get_adapter, prune
from prunekit.layerwise import prune_layerwise
from prunekit.patterns import max_nonzeros_per_group, select_mask
from prunekit.pruners import PRUNERS, PruneConfig, ScorePruner


@dataclass
class SquareConfig(PruneConfig):
    """A toy pruner: S_ij = W_ij² · ‖X_j‖ (nothing else written)."""

    method = "toy-square"

    def make_pruner(self, in_features, device):
        return SquarePruner(self, in_features, device)


class SquarePruner(ScorePruner):
    def scores(self, weight):
        return weight.pow(2) * self.sq_norm.sqrt().unsqueeze(0)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(PRUNERS, SquareConfig.method, SquareConfig)


NAMES = ["toy-square", "ria"]


def _ops(model):
    adapter = get_adapter(model)
    return [op for layer in adapter.layers() for _, op in adapter.linears(layer)]


@pytest.mark.parametrize("name", NAMES)
def test_n_m_through_the_engine_keeps_the_highest_scores(name):
    model, calib = tiny_llama(), random_windows()
    dense = [op.weight.detach().clone() for op in _ops(model)]
    result = prune(model, PRUNERS[name](pattern="2:4"), calib, progress=False)
    assert abs(result.achieved_sparsity - 0.5) < 1e-9
    for op in _ops(model):
        assert max_nonzeros_per_group(op.weight, 4) <= 2
    # the first operator sees the layer's embedded inputs: recompute its scores independently
    first = model.model.layers[0].self_attn.q_proj.weight
    X = model.model.layers[0].input_layernorm(model.model.embed_tokens(calib)).reshape(-1, 64)
    pruner = PRUNERS[name](pattern="2:4").make_pruner(64, "cpu")
    pruner.add_batch(X.detach())
    expected = select_mask(pruner.scores(dense[0]), pruner.config.pattern, 0.5)
    assert torch.equal(first != 0, expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_run_equals_an_uninterrupted_one(name, tmp_path):
    calib = random_windows()
    full = tiny_llama(layers=3)
    prune_layerwise(full, PRUNERS[name](0.5), calib, progress=False)
    interrupted = tiny_llama(layers=3)
    stop = get_adapter(interrupted).layers()[2].register_forward_pre_hook(
        lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prune_layerwise(interrupted, PRUNERS[name](0.5), calib, progress=False, checkpoint_dir=tmp_path)
    stop.remove()
    resumed = tiny_llama(layers=3)
    prune_layerwise(resumed, PRUNERS[name](0.5), calib, progress=False, checkpoint_dir=tmp_path)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(_ops(full), _ops(resumed)))


@pytest.mark.parametrize("name", NAMES)
def test_rotpruner_learns_against_the_pruner_and_prunes_with_it(name):
    model = tiny_llama()
    result = prune(model, RotPrunerConfig(pattern="2:4", base_pruner=name, steps=3, lr=0.05, train_samples=2),
                   random_windows(), progress=False)
    assert result.details["rotpruner"]["distance_from_identity"] > 0  # Q moved
    assert all(max_nonzeros_per_group(op.weight, 4) <= 2 for op in _ops(model))


@pytest.mark.parametrize("name", NAMES)
def test_losa_prunes_every_stage_with_the_pruner(name, tmp_path, capsys):
    model_dir, text = tmp_path / "model", tmp_path / "text.txt"
    tiny_llama().save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    text.write_text(TEXT)
    out = tmp_path / "out"
    code, _, err = run_cli(["prune", "--model", model_dir, "--calib-data", text, "--eval-data", "none", "--nsamples", 4,
                            "--seqlen", 32, "--output", out, "--quiet", "--method", "losa", "--base-pruner", name,
                            "--sparsity", 0.5, "--stages", 2, "--train-data", text, "--train-tokens", 128,
                            "--train-seqlen", 32, "--train-batch-size", 2, "--rank", 2, "--rmi-tokens", 32,
                            "--feature-windows", 2], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["base_pruner"] == name and abs(report["achieved_sparsity"] - 0.5) < 0.02
    assert report["details"]["mask_check"]["nonzero_outside_mask"] == 0
