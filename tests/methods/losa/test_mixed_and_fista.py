"""LoSA with mixed N:M (each layer's N_l from RMI on the dense model, realised exactly by every stage) and over
FISTA (the paired loop of prunekit.correction hands LoSA each pruned layer's outputs: tests/test_engine.py
checks those outputs)."""

from __future__ import annotations

import dataclasses

from conftest import byte_tokenizer, random_windows, tiny_llama
from prunekit import LosaConfig, get_adapter, prune

SMALL = dict(stages=2, rank=4, train_tokens=4 * 64, train_seqlen=64, train_batch_size=2, rmi_tokens=64,
             feature_windows=2, lr=1e-3)
FAST_FISTA = dict(iters=4, lam_steps=2, refit_iters=4)


def run(text_file, **options):
    model = tiny_llama(layers=4)
    config = LosaConfig(train_data=str(text_file), **{**SMALL, **options})
    return model, prune(model, config, random_windows(n=4, seqlen=32), tokenizer=byte_tokenizer(), progress=False)


def test_losa_mixed_two_four_keeps_each_layers_n_in_every_stage(text_file):
    model, result = run(text_file, pattern="mixed-2:4", base_pruner="sparsegpt")
    N = result.details["mixed"]["N"]
    assert sorted(N) == [1, 1, 3, 3]  # RMI with a one-step band: N − 1 or N + 1 (delta = 1/4)
    for stage in result.details["stages"]:  # every stage at the full N_l:M
        assert stage["layer_sparsity"] == [1 - n / 4 for n in N]
    adapter = get_adapter(model)
    for N_l, layer in zip(N, adapter.layers()):
        for name, op in adapter.linears(layer):
            counts = (op.weight != 0).reshape(op.weight.shape[0], -1, 4).sum(dim=2)
            assert int(counts.max()) == int(counts.min()) == N_l, name
    assert result.achieved_sparsity == 0.5 and result.details["mask_check"]["nonzero_outside_mask"] == 0


def test_losa_over_fista(text_file, monkeypatch):
    base_config = LosaConfig.base_config  # FISTA with a shorter λ search, to keep the test fast
    monkeypatch.setattr(LosaConfig, "base_config", lambda self, s: dataclasses.replace(base_config(self, s), **FAST_FISTA))
    model, result = run(text_file, sparsity=0.6, base_pruner="fista")
    stages = result.details["stages"]
    assert [len(s["recon_error"]) for s in stages] == [4, 4]  # output errors: FISTA handed each layer's outputs
    assert len(set(stages[-1]["layer_sparsity"])) > 1  # RMI rates
    assert abs(sum(stages[-1]["layer_sparsity"]) / 4 - 0.6) < 1e-4  # to whole weights
    assert abs(result.achieved_sparsity - 0.6) < 1e-3
    assert result.details["mask_check"]["nonzero_outside_mask"] == 0
