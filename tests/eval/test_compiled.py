"""eval.compiled: a 2:4 model under torch.compile traces as one graph per input shape (no graph break at its
kernel layers), gives the eager logits, and its kernel layers run eagerly through the custom op on every call.
Dynamo's `aot_eager` backend stands in for Inductor (no C++ toolchain or minutes of compiling in the suite)."""

import re

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import tiny_llama
from prunekit.eval import compiled as compiled_module
from prunekit.eval.speed import measure_model
from prunekit.models.adapters import get_adapter
from prunekit.patterns import keep_n_of_m
from prunekit.sparse.linear import SparseLinear24, sparsify


def _sparse_llama(layers: int = 3):
    model = tiny_llama(layers=layers).eval()
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer in adapter.layers():
            for _, op in adapter.linears(layer):
                op.weight.masked_fill_(~keep_n_of_m(op.weight.abs().float(), 2, 4), 0.0)
    assert sparsify(model) == 7 * layers
    return model


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_one_graph_per_shape_same_logits_layers_eager(fresh_dynamo, monkeypatch):
    model = _sparse_llama()
    calls = []
    original = SparseLinear24.forward
    monkeypatch.setattr(SparseLinear24, "forward", lambda self, x: calls.append(1) or original(self, x))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = [model(ids).logits, model(ids[:, :1]).logits]
        calls.clear()
        fast = compiled_module.compiled(model, backend="aot_eager")
        got = [fast(ids).logits, fast(ids[:, :1]).logits, fast(ids).logits]
    assert counters["stats"]["unique_graphs"] == 2  # prefill and one-token shapes; no break at the 21 layers
    assert len(calls) == 3 * 21  # every call of every kernel layer ran its own forward, eagerly
    for a, b in zip(got, eager + eager[:1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_measure_model_compiles_when_asked(fresh_dynamo, monkeypatch):
    model = _sparse_llama(2)
    used = []
    monkeypatch.setattr("prunekit.eval.speed.compiled",
                        lambda m: used.append(1) or compiled_module.compiled(m, backend="aot_eager"))
    result = measure_model(model, batch=1, prompt_len=8, gen_len=2, repeats=1, compile=True)
    assert used == [1] and result["compiled"] and result["decode_tokens_per_s"] > 0
    assert not any("forward" in vars(m) for m in model.modules())  # measure_model restores the layers
    assert measure_model(model, batch=1, prompt_len=8, gen_len=2, repeats=1)["compiled"] is False and used == [1]


def test_a_freed_model_is_not_kept_alive(fresh_dynamo):
    import gc
    import weakref

    model = _sparse_llama(1)
    fast = compiled_module.compiled(model, backend="aot_eager")
    with torch.no_grad():
        fast(torch.randint(0, 256, (1, 8)))
    alive = weakref.ref(next(m for m in model.modules() if isinstance(m, SparseLinear24)))
    del model, fast
    torch._dynamo.reset()  # the compiled code holds the model, as any compiled model does until reset
    gc.collect()
    assert alive() is None


def test_restore_gives_the_layers_their_forward_back(fresh_dynamo, monkeypatch):
    monkeypatch.setattr(compiled_module, "cusparselt_writes_transposed", lambda: True)  # as torch's cuSPARSELt
    model = _sparse_llama(1)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear24)]
    layers[0].contiguous_output = False  # a layer sparsify left as a view (not feeding attention)
    eager = [False] + [True] * (len(layers) - 1)
    for keep_layout in (False, True):
        compiled_module.compiled(model, backend="aot_eager", keep_layout=keep_layout)
        assert all("forward" in vars(m) for m in layers)
        # keep_layout: the op decides the layout; otherwise the layers are left as they were
        assert [m.contiguous_output for m in layers] == ([False] * len(layers) if keep_layout else eager)
        compiled_module.restore(model)
        assert not any("forward" in vars(m) or hasattr(m, "_eager_contiguous_output") for m in layers)
        assert [m.contiguous_output for m in layers] == eager


@pytest.mark.parametrize("keep_layout", [False, True])
def test_the_op_keeps_cusparselts_layout_and_its_fake_agrees(fresh_dynamo, monkeypatch, keep_layout):
    """With keep_layout, where the layer writes its output transposed (above 16 rows, a multiple of 16, with
    cuSPARSELt: here on CPU by the same row rule, the layer's contiguous result copied into that layout) the op hands it
    back so; without it, always contiguous. Either way its fake has the output's shape and strides (opcheck), and a
    compiled prefill of 2 × 16 tokens gives the eager logits."""
    monkeypatch.setattr(SparseLinear24, "writes_transposed",
                        lambda self, x: x.numel() // x.shape[-1] > 16 and x.numel() // x.shape[-1] % 16 == 0)
    monkeypatch.setattr(compiled_module, "cusparselt_writes_transposed", lambda: True)
    model = _sparse_llama(1)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(ids).logits
        fast = compiled_module.compiled(model, backend="aot_eager", keep_layout=keep_layout)
        assert torch.allclose(fast(ids).logits, eager, atol=1e-6, rtol=0)
    layer = next(m for m in model.modules() if isinstance(m, SparseLinear24))
    index = next(i for i, ref in compiled_module._LAYERS.items() if ref() is layer)
    for shape in ((1, layer.in_features), (12, layer.in_features), (32, layer.in_features), (2, 16, layer.in_features)):
        x = torch.randn(shape)
        y = compiled_module.kernel_layer(x, index, keep_layout)
        assert torch.allclose(y, x @ layer.dense_weight().T, atol=1e-5)
        rows = x.numel() // x.shape[-1]
        transposed = keep_layout and rows > 16
        assert y.is_contiguous() == (not transposed)
        assert y.reshape(rows, -1).stride() == ((1, rows) if transposed else (layer.out_features, 1))
        torch.library.opcheck(compiled_module.kernel_layer, (x, index, keep_layout))


@pytest.mark.parametrize("torch_library", [True, False])
def test_the_layout_is_written_in_the_traced_graph(fresh_dynamo, monkeypatch, torch_library):
    """Inductor's on-disk cache keys a compiled graph by its code after AOT autograd: whether the op may hand back a
    transposed output (keep_layout, with torch's cuSPARSELt writing W xᵀ) must be written there, or a cached
    contiguous compile would serve a keep_layout model in another process (it did on an H100: a stride check failed).
    Apart from the layer indices, the graphs with and without keep_layout differ exactly when it can take effect."""
    from torch._dynamo.backends.common import aot_autograd

    monkeypatch.setattr(compiled_module, "cusparselt_writes_transposed", lambda: torch_library)
    codes = []

    def record(gm, example_inputs):
        codes.append(gm.code)
        return gm

    model = _sparse_llama(1)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for keep_layout in (False, True):
            compiled_module.compiled(model, backend=aot_autograd(fw_compiler=record), keep_layout=keep_layout)(ids)
            compiled_module.restore(model)
    for code, keep in zip(codes, (False, torch_library), strict=True):
        assert re.findall(r"kernel_layer\.default\(\w+, \d+, (\w+)\)", code) == [str(keep)] * 7
    without_index = [re.sub(r"(kernel_layer\.default\(\w+), \d+,", r"\1,", code) for code in codes]
    assert (without_index[0] != without_index[1]) == torch_library


def test_on_cpu_every_output_is_contiguous(fresh_dynamo):
    """Without cuSPARSELt nothing is written transposed, so even with keep_layout the op adds no copy: contiguous at
    every row count."""
    model = _sparse_llama(1)
    compiled_module.compiled(model, backend="aot_eager", keep_layout=True)
    layer = next(m for m in model.modules() if isinstance(m, SparseLinear24))
    index = next(i for i, ref in compiled_module._LAYERS.items() if ref() is layer)
    for rows in (1, 32, 48):
        assert compiled_module.kernel_layer(torch.randn(rows, layer.in_features), index, True).is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuSPARSELt writes the transposed output)")
@pytest.mark.parametrize("keep_layout", [False, True])
@pytest.mark.parametrize("shape", [(32, 256), (48, 256), (2, 16, 256), (1, 8, 256)])
def test_the_ops_fake_matches_cusparselt_on_cuda(fresh_dynamo, shape, keep_layout):
    """On the real 2:4 path (bf16, CUDA) the op's output and its fake agree in shape and strides (opcheck)."""
    from prunekit.eval.speed import random_24_linear

    layer = SparseLinear24.from_linear(random_24_linear(128, 256, torch.bfloat16))
    model = torch.nn.Sequential(layer)
    compiled_module.compiled(model, backend="aot_eager", keep_layout=keep_layout)
    index = next(i for i, ref in compiled_module._LAYERS.items() if ref() is layer)
    x = torch.randn(shape, dtype=torch.bfloat16, device="cuda")
    torch.library.opcheck(compiled_module.kernel_layer, (x, index, keep_layout))
