"""Sensitivity allocation: each probe's loss against an independent whole-model computation, the dynamic program
against brute force, and exact averages end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from conftest import random_windows, run_cli, tiny_llama

from prunekit.allocation import layer_sizes
from prunekit.allocation import sensitivity
from prunekit.allocation.sensitivity import STEPS, layer_losses, least_loss_steps, step_rates
from prunekit.patterns import Pattern


def wanda_norms(model, windows):
    """‖X_j‖₂ of every decoder linear's inputs, by hooks during plain forward passes of the whole model."""
    sq, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            def hook(mod, args, name=name):
                sq[name] = sq.get(name, 0) + args[0].reshape(-1, args[0].shape[-1]).double().pow(2).sum(0)
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    for h in handles:
        h.remove()
    return {name: v.sqrt() for name, v in sq.items()}


def reference_loss(model, windows, norms, layer, pattern, rate, loss_windows, block=""):
    """The whole model's mean next-token loss with decoder layer `layer` (or only its operators under `block`,
    e.g. "mlp.") alone pruned by Wanda's rule."""
    saved = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(f"model.layers.{layer}.{block}"):
            W = module.weight.data
            saved[name] = W.clone()
            scores = W.double().abs() * norms[name]
            if pattern.is_nm:
                n = pattern.n if not pattern.mixed else round(pattern.m * (1 - rate))
                groups = scores.reshape(W.shape[0], -1, pattern.m)
                keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.topk(n, dim=2).indices, True)
                keep = keep.reshape(W.shape)
            else:
                drop = scores.topk(int(W.shape[1] * rate), dim=1, largest=False).indices
                keep = torch.ones_like(W, dtype=torch.bool).scatter_(1, drop, False)
            W.mul_(keep)
    with torch.no_grad():
        loss = model(input_ids=windows[:loss_windows], labels=windows[:loss_windows], use_cache=False).loss.item()
    for name, module in model.named_modules():
        if name in saved:
            module.weight.data.copy_(saved[name])
    return loss


@pytest.mark.parametrize("pattern,target,h", [("unstructured", 0.6, 0.1), ("mixed-2:8", 0.75, 0.125)])
def test_each_probe_is_the_whole_models_loss_with_that_layer_pruned(pattern, target, h):
    model, windows = tiny_llama(layers=3), random_windows(6, 32)
    pattern = Pattern.parse(pattern)
    losses, dense = layer_losses(model, windows, pattern, target, h, windows=4, batch_size=4, progress=False)
    with torch.no_grad():
        assert dense == pytest.approx(model(input_ids=windows[:4], labels=windows[:4]).loss.item(), rel=1e-5)
    norms = wanda_norms(model, windows)
    for layer in range(3):
        for k, rate in enumerate(step_rates(target, h)):
            ref = reference_loss(model, windows, norms, layer, pattern, rate, 4)
            assert losses[layer, k] == pytest.approx(ref, rel=1e-5)
    assert np.ptp(losses) > 1e-4  # the probes differ: pruning harder or softer changes the loss


def test_least_loss_steps_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    for trial in range(20):
        L = 6
        losses = rng.normal(size=(L, 3))
        if trial % 4 == 0:
            losses[rng.integers(L), 0] = np.inf  # a rate outside [0, 1)
        sizes = [10] * 3 + [20] * 3 if trial % 2 else [10] * L
        best = min((c for c in itertools.product(range(3), repeat=L)
                    if all(sum(STEPS[c[l]] for l in range(L) if sizes[l] == s) == 0 for s in set(sizes))),
                   key=lambda c: sum(losses[l, c[l]] for l in range(L)))
        steps = least_loss_steps(losses, sizes)
        assert sum(losses[l, STEPS.index(j)] for l, j in enumerate(steps)) == pytest.approx(
            sum(losses[l, best[l]] for l in range(L)))
        for s in set(sizes):
            assert sum(j for j, n in zip(steps, sizes) if n == s) == 0


@pytest.mark.parametrize("pattern,target,h", [("unstructured", 0.7, 0.08), ("mixed-2:4", 0.5, 0.25)])
def test_the_layer_that_loses_most_gets_denser(monkeypatch, pattern, target, h):
    """Hand-made probe losses: layer 0 suffers most from its sparser rate, layer 2 least from it, so layer 0 steps up
    (denser: s − h, N + 1) and layer 2 down; the rates and N say so."""
    losses = np.array([[9.0, 3.5, 3.3], [3.6, 3.4, 3.35], [3.45, 3.4, 3.39]])  # columns: step_rates (s + h, s, s − h)
    monkeypatch.setattr(sensitivity, "layer_losses", lambda *a, **k: (losses, 3.3))
    pattern = Pattern.parse(pattern)
    rates, report = sensitivity.sensitivity_rates(None, torch.zeros(8, 4), pattern, target, h, [1000] * 3)
    assert rates == pytest.approx([target - h, target, target + h], abs=2e-3)  # to one weight
    if pattern.mixed:
        assert report["mixed"]["N"] == [3, 2, 1]


def test_each_block_probe_is_the_whole_models_loss_with_that_block_pruned():
    """sensitivity-blocks: units are (layer 0 attention, layer 0 MLP, layer 1 attention, ...)."""
    model, windows = tiny_llama(layers=2), random_windows(6, 32)
    pattern = Pattern.parse("unstructured")
    losses, _ = layer_losses(model, windows, pattern, 0.6, 0.1, windows=4, blocks=True, batch_size=4, progress=False)
    norms = wanda_norms(model, windows)
    assert losses.shape == (4, 3)
    for layer in range(2):
        for b, block in enumerate(("self_attn.", "mlp.")):
            for k, rate in enumerate(step_rates(0.6, 0.1)):
                ref = reference_loss(model, windows, norms, layer, pattern, rate, 4, block)
                assert losses[2 * layer + b, k] == pytest.approx(ref, rel=1e-5)


def test_sensitivity_blocks_end_to_end(tiny_model_dir, text_file, tmp_path, capsys):
    """Each layer gets an [attention, MLP] pair; each kind of block averages the target over its weights, and every
    operator is pruned at its block's rate."""
    args = ["prune", "--model", tiny_model_dir, "--calib-data", text_file, "--eval-data", "none", "--nsamples", 8,
            "--seqlen", 32, "--device", "cpu", "--quiet", "--output", tmp_path / "out", "--method", "wanda",
            "--sparsity", 0.6, "--layer-sparsity", "sensitivity-blocks", "--owl-lambda", 0.1]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    allocation = report["details"]["layer_sparsity"]
    from transformers import AutoModelForCausalLM

    from prunekit.allocation import block_sizes

    sizes = block_sizes(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    rates = allocation["rates"]
    assert allocation["allocation"] == "sensitivity-blocks" and all(len(pair) == 2 for pair in rates)
    flat = [r for pair in rates for r in pair]
    assert len(flat) == len(sizes) == len(allocation["losses"])
    for kind in (0, 1):  # attention, MLP: each kind averages the target on its own
        n = sizes[kind::2]
        assert sum(r * k for r, k in zip(flat[kind::2], n)) == pytest.approx(0.6 * sum(n), abs=1)
        assert all(0.5 - 1e-6 <= r <= 0.7 + 1e-6 for r in flat[kind::2])
    for op in report["layers"]:
        layer = int(op["name"].split(".")[2])
        rate = rates[layer][0 if ".self_attn." in op["name"] else 1]
        assert op["sparsity"] == pytest.approx(rate, abs=1 / op["shape"][1])  # Wanda rounds per row


def test_sensitivity_blocks_refuses_a_mixed_pattern():
    from prunekit.methods import config_class

    with pytest.raises(ValueError, match="use --layer-sparsity sensitivity .one rate per layer., not sensitivity-blocks"):
        config_class("wanda")(pattern="mixed-2:8", layer_sparsity="sensitivity-blocks")


def test_ties_stay_uniform():
    assert least_loss_steps(np.ones((5, 3)), [7] * 5) == [0] * 5


@pytest.mark.parametrize("pattern,extra", [("unstructured", ["--sparsity", 0.7]), ("mixed-2:8", [])])
def test_sensitivity_end_to_end(pattern, extra, tiny_model_dir, text_file, tmp_path, capsys):
    args = ["prune", "--model", tiny_model_dir, "--calib-data", text_file, "--eval-data", "none", "--nsamples", 8,
            "--seqlen", 32, "--device", "cpu", "--quiet", "--output", tmp_path / "out", "--method", "wanda",
            "--pattern", pattern, "--layer-sparsity", "sensitivity", *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    allocation = json.loads((tmp_path / "out" / "report.json").read_text())["details"]["layer_sparsity"]
    from transformers import AutoModelForCausalLM

    sizes = layer_sizes(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    target = 0.7 if pattern == "unstructured" else 0.75
    assert sum(r * n for r, n in zip(allocation["rates"], sizes)) == pytest.approx(target * sum(sizes), abs=1)
    assert len(allocation["losses"]) == len(sizes) and allocation["allocation"] == "sensitivity"
    if pattern != "unstructured":
        assert set(allocation["mixed"]["N"]) <= {1, 2, 3} and sum(allocation["mixed"]["N"]) == 2 * len(sizes)
