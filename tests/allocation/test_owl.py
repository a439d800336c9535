"""OWL: outlier ratios against an independent whole-model computation, rates that average exactly the target
and stay within ± λ, and `--layer-sparsity` end to end for every layer-wise pruner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import random_windows, run_cli, tiny_llama

from prunekit.allocation import layer_sizes, outlier_ratios, owl_rates


def reference_ratios(model, windows, M):
    """|W_ij|·‖X_j‖ with X gathered by hooks on every linear during plain forward passes of the whole model."""
    sq = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            def hook(mod, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sq[name] = sq.get(name, 0) + x.pow(2).sum(0)
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for w in windows:
            model(input_ids=w[None], use_cache=False)
    for h in handles:
        h.remove()
    ratios = []
    for i, layer in enumerate(model.model.layers):
        scores = torch.cat([(m.weight.double().abs() * sq[f"model.layers.{i}.{n}"].sqrt()).flatten()
                            for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)])
        ratios.append(float((scores > M * scores.mean()).double().mean()))
    return ratios


def test_outlier_ratios_match_a_whole_model_computation():
    model, windows = tiny_llama(layers=3), random_windows(4, 32)
    for M in (2.0, 3.0):
        ours = outlier_ratios(model, windows, M, progress=False)
        assert ours == pytest.approx(reference_ratios(model, windows, M), abs=2e-4)  # a tie or two flips
    assert len(set(ours)) > 1


@pytest.mark.parametrize("target,lam", [(0.5, 0.08), (0.7, 0.08), (0.7, 0.2), (0.95, 0.1)])
def test_owl_rates_average_exactly_and_stay_within_lambda(target, lam):
    rng = np.random.default_rng(0)
    ratios = rng.uniform(0.001, 0.02, 12).tolist()
    sizes = rng.integers(1000, 5000, 12).tolist()
    rates = owl_rates(ratios, sizes, target, lam)
    zeros = sum(round(r * n) for r, n in zip(rates, sizes))
    assert zeros == round(target * sum(sizes))
    assert all(max(0, target - lam) - 1 / n <= r <= min(1, target + lam) + 1 / n for r, n in zip(rates, sizes))
    order = np.argsort(ratios)  # more outliers, lower sparsity
    assert all(np.diff(np.asarray(rates)[order]) <= 1e-3)
    room = min(lam, 1 - target)  # 95% ± 0.1 can only rise to 100%
    assert max(rates) - min(rates) > room  # the allocation actually spreads the rates


def test_owl_rates_uniform_when_ratios_are_equal():
    assert owl_rates([0.01] * 4, [100] * 4, 0.5, 0.08) == [0.5] * 4


def prune_args(model, text, out, *extra):
    return ["prune", "--model", model, "--calib-data", text, "--eval-data", "none", "--nsamples", 4, "--seqlen", 32,
            "--device", "cpu", "--quiet", "--output", out, *extra]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude", "ria", "fista"])
@pytest.mark.parametrize("allocation", ["owl", "rmi"])
def test_layer_sparsity_end_to_end(method, allocation, tiny_model_dir, text_file, tmp_path, capsys):
    extra = ["--iters", 4, "--lam-steps", 2] if method == "fista" else []
    code, _, err = run_cli(prune_args(tiny_model_dir, text_file, tmp_path / "out", "--method", method,
                                      "--sparsity", 0.7, "--layer-sparsity", allocation, "--owl-m", 2, *extra), capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rates = report["details"]["layer_sparsity"]["rates"]
    from transformers import AutoModelForCausalLM

    sizes = layer_sizes(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert sum(r * n for r, n in zip(rates, sizes)) == pytest.approx(0.7 * sum(sizes), abs=1)
    per_layer = {}
    for op in report["layers"]:
        layer = int(op["name"].split(".")[2])
        per_layer.setdefault(layer, []).append(op["sparsity"] * op["shape"][0] * op["shape"][1])
    achieved = [sum(z) / n for z, n in zip(per_layer.values(), sizes)]
    assert achieved == pytest.approx(rates, abs=0.02)  # per-row selection rounds each row


def test_layer_sparsity_refuses_n_m(tiny_model_dir, text_file, tmp_path, capsys):
    code, _, err = run_cli(prune_args(tiny_model_dir, text_file, tmp_path / "out", "--pattern", "2:4",
                                      "--layer-sparsity", "owl"), capsys)
    assert code == 2 and "use --pattern unstructured" in err and len(err.strip().splitlines()) == 1
