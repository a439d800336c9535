"""The error-correction modes of the paired dense/pruned loop (FISTAPruner)."""

import copy

import pytest
import torch

from conftest import random_windows, tiny_llama
from prunekit import FistaConfig, SparseGPTConfig, get_adapter, prune
from prunekit.pruners.fista import FistaPruner

FAST = {"lam_steps": 3, "iters": 5, "refit_iters": 5}


@pytest.fixture
def spy(monkeypatch):
    """Records every add_batch call as {pruner number: [(x, x_dense), ...]}, pruners numbered in creation order."""
    calls: dict[int, list] = {}
    created = []
    original_init, original_add = FistaPruner.__init__, FistaPruner.add_batch

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.number = len(created)
        created.append(self)

    def add_batch(self, x, x_dense=None):
        calls.setdefault(self.number, []).append((x.detach().clone(), None if x_dense is None else x_dense.clone()))
        return original_add(self, x, x_dense)

    monkeypatch.setattr(FistaPruner, "__init__", init)
    monkeypatch.setattr(FistaPruner, "add_batch", add_batch)
    return calls


def op_input(layer, op, hidden, kwargs):
    box = []
    handle = op.register_forward_pre_hook(lambda module, args: box.append(args[0]))
    layer(hidden, **kwargs)
    handle.remove()
    return box[0].reshape(-1, box[0].shape[-1])


def layer_inputs(model, ids):
    return model(input_ids=ids, output_hidden_states=True).hidden_states


def stacked(calls):
    xs = torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in calls])
    dense = [d for _, d in calls]
    return xs, (None if dense[0] is None else torch.cat([d.reshape(-1, d.shape[-1]) for d in dense]))


def layer_kwargs(model, ids):
    from prunekit.engine import capture_inputs

    return capture_inputs(get_adapter(model), ids, "cpu", progress=False).kwargs


@torch.no_grad()
def test_intra_feeds_o_proj_the_output_of_the_pruned_q_k_v(spy):
    dense = tiny_llama()
    model = copy.deepcopy(dense)
    ids = random_windows()
    prune(model, FistaConfig(0.5, **FAST), ids, progress=False)
    kwargs = layer_kwargs(dense, ids)
    h0 = layer_inputs(dense, ids)[0]
    x_star, x = stacked(spy[1])  # pruner 1 = layer 0, group (o_proj,)
    dense_layer, pruned_layer = dense.model.layers[0], model.model.layers[0]
    expected_x = op_input(dense_layer, dense_layer.self_attn.o_proj, h0, kwargs[0])
    # o_proj's input depends on the layer input and q/k/v only: the final model's pruned q/k/v give X*
    expected_x_star = op_input(pruned_layer, pruned_layer.self_attn.o_proj, h0, kwargs[0])
    assert torch.allclose(x, expected_x, atol=1e-5)
    assert torch.allclose(x_star, expected_x_star, atol=1e-5)
    assert not torch.allclose(x_star, x, atol=1e-3)  # the correction is not a no-op
    assert spy[0][0][1] is None  # q/k/v themselves: X* = X, the dense layer input


@torch.no_grad()
def test_intra_layers_read_dense_inputs_and_intra_inter_pruned_ones(spy):
    dense = tiny_llama()
    ids = random_windows()
    kwargs = layer_kwargs(dense, ids)
    layer1 = dense.model.layers[1]
    h0, h1 = layer_inputs(dense, ids)[:2]
    q_input_dense = op_input(layer1, layer1.self_attn.q_proj, h1, kwargs[1])

    prune(copy.deepcopy(dense), FistaConfig(0.5, error_correction="intra", **FAST), ids, progress=False)
    x_star, x = stacked(spy[4])  # pruner 4 = layer 1, group (q, k, v)
    assert x is None and torch.allclose(x_star, q_input_dense, atol=1e-5)

    spy.clear()
    model = copy.deepcopy(dense)
    prune(model, FistaConfig(0.5, error_correction="intra+inter", **FAST), ids, progress=False)
    x_star, x = stacked(spy[12])  # numbering goes on from the first run: 8 + (layer 1, group 0)
    assert torch.allclose(x, q_input_dense, atol=1e-5)
    h1_pruned = model.model.layers[0](h0, **kwargs[0])
    assert torch.allclose(x_star, op_input(layer1, layer1.self_attn.q_proj, h1_pruned, kwargs[1]), atol=1e-5)
    assert not torch.allclose(x_star, x, atol=1e-3)


@torch.no_grad()
def test_none_fits_every_operator_to_dense_inputs(spy):
    dense = tiny_llama()
    ids = random_windows()
    prune(copy.deepcopy(dense), FistaConfig(0.5, error_correction="none", **FAST), ids, progress=False)
    layer = dense.model.layers[0]
    expected = op_input(layer, layer.mlp.down_proj, layer_inputs(dense, ids)[0], layer_kwargs(dense, ids)[0])
    x_star, x = stacked(spy[3])  # layer 0, group (down_proj,)
    assert x is None and torch.allclose(x_star, expected, atol=1e-5)


def test_modes_give_different_models_and_keep_the_target_sparsity():
    ids = random_windows()
    weights = {}
    for mode in ("intra", "none", "intra+inter"):
        model = tiny_llama(layers=3)
        result = prune(model, FistaConfig(0.5, error_correction=mode, **FAST), ids, progress=False)
        assert abs(result.achieved_sparsity - 0.5) < 1e-3
        assert all(op.extra["iterations"] > 0 for op in result.operators)
        weights[mode] = model.model.layers[2].mlp.down_proj.weight.clone()
    assert not torch.equal(weights["intra"], weights["none"])
    assert not torch.equal(weights["intra"], weights["intra+inter"])


def test_baselines_keep_their_engine_path():
    """SparseGPT has no error_correction field, so it never enters the paired loop."""
    model = tiny_llama()
    result = prune(model, SparseGPTConfig(0.5), random_windows(), progress=False)
    assert all(op.extra is None for op in result.operators)
