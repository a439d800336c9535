"""Every kernel decision of a SparseLinear24 is recorded with its reason, dense included as a timed candidate.

The CUDA choice is exercised on CPU with a fake timing table: the timer returns the milliseconds that the
faked `_run` reports for the plan it is asked to run, so `_choose` sees exactly the table."""

import pytest
import torch

from conftest import tiny_llama
from prunekit.sparse import SparseLinear24, kernel_paths, linear, path_counts, sparsify, timing, triton_decode
from prunekit.sparse import paths as path_log
from prunekit.sparse.linear import DENSE

from .scripted import script_time_calls
from .test_linear import random_24


def layer_24(out=48, inp=64, dtype=torch.float32) -> SparseLinear24:
    dense = torch.nn.Linear(inp, out, dtype=dtype)
    dense.weight.data = random_24(out, inp, dtype)
    return SparseLinear24.from_linear(dense)


def test_cpu_forward_records_dense_and_why():
    sparse = layer_24()
    sparse(torch.randn(3, 64))
    assert sparse.paths == {"cpu": ("dense", "CPU: no sparse kernel; dense product of the weight unpacked for "
                                              "this call")}


def test_kernel_paths_collects_every_sparse_layer_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 64))
    model[0].weight.data, model[2].weight.data = random_24(48, 64), random_24(64, 48)
    assert sparsify(model) == 2
    assert kernel_paths(model) == {"0": {}, "2": {}}  # not run yet
    model(torch.randn(2, 64))
    paths = kernel_paths(model)
    assert set(paths) == {"0", "2"} and all(p["cpu"][0] == "dense" for p in paths.values())
    assert path_counts(paths) == {"dense": 2}


@pytest.mark.parametrize("setting,logged", [("1", True), ("kernels", True), ("io,kernels", True), ("", False),
                                            ("0", False)])
def test_prunekit_log_prints_each_decision_once(monkeypatch, capsys, setting, logged):
    monkeypatch.setenv("PRUNEKIT_LOG", setting)
    monkeypatch.setattr(path_log, "_LOGGED", set())
    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    model[0].weight.data = random_24()
    sparsify(model)
    for _ in range(3):
        model(torch.randn(2, 64))
    lines = capsys.readouterr().err.splitlines()
    assert lines == (["prunekit: kernel 0 cpu: dense — CPU: no sparse kernel; dense product of the weight unpacked "
                      "for this call"] if logged else [])


def test_identical_decisions_of_unnamed_copies_are_logged_once(monkeypatch, capsys):
    monkeypatch.setenv("PRUNEKIT_LOG", "1")
    monkeypatch.setattr(path_log, "_LOGGED", set())
    copies = [layer_24() for _ in range(3)]
    for layer in copies:
        layer(torch.randn(1, 64))
    assert all(layer.paths for layer in copies)
    assert capsys.readouterr().err.count("prunekit: kernel [48×64] cpu: dense") == 1


class FakeTable:
    """Stand-ins for the CUDA pieces of SparseLinear24: `run` reports the table's milliseconds for a plan (or
    raises for a plan the library refuses), `time_calls` returns what the timed call reports."""

    def __init__(self, monkeypatch, layer, table: dict, refused=()):
        self.table, self.refused = table, set(refused)
        monkeypatch.setattr(linear, "PLANS", {})
        monkeypatch.setattr(linear, "PLAN_TIMINGS", {})
        monkeypatch.setattr(linear, "PLAN_REASONS", {})
        monkeypatch.setattr(timing, "cold_timer", lambda device: lambda call: call())
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        monkeypatch.setattr(layer, "_prepare_cuda", lambda: None)
        monkeypatch.setattr(layer, "_candidates", lambda x2: ([*table, *self.refused],
                                                              {"gemv": "RuntimeError: no gemv launch configuration"}))
        monkeypatch.setattr(layer, "_run", self.run)

    def run(self, plan, x2, key=None):
        if plan in self.refused:
            raise RuntimeError(f"algorithm {plan[1]} is not available\nfor this shape")
        return self.table[plan]


def test_without_dense_fallback_the_fastest_sparse_kernel_runs_and_says_dense_was_faster(monkeypatch):
    sparse = layer_24(dtype=torch.float16)
    assert SparseLinear24.dense_fallback is False  # the default: a 2:4 layer never keeps a dense copy
    FakeTable(monkeypatch, sparse, {("cslt", 0): 0.020, ("triton", 0): 0.015, DENSE: 0.010})
    assert sparse._cuda_forward(torch.randn(4, 64, dtype=torch.float16)) == 0.015  # triton, not dense
    path, reason = sparse.paths["rows=4, float16"]
    assert path == "triton" and reason.startswith("fastest 2:4 kernel, 1.50× dense's time (dense not run")
    assert "dense 0.0100 ms, triton 0.0150 ms, cslt/0 0.0200 ms" in reason and sparse._dense is None


def test_dense_runs_where_every_sparse_kernel_is_slower(monkeypatch):
    sparse = layer_24(dtype=torch.float16)
    monkeypatch.setattr(SparseLinear24, "dense_fallback", True)
    FakeTable(monkeypatch, sparse, {("cslt", 0): 0.020, ("triton", 0): 0.015, DENSE: 0.010}, refused=[("cslt", 3)])
    x2 = torch.randn(4, 64, dtype=torch.float16)
    assert sparse._cuda_forward(x2) == 0.010  # the dense plan ran
    key = (48, 64, 4, torch.float16, True, True)
    assert linear.PLANS[key] == DENSE
    assert linear.PLAN_TIMINGS[key] == {"cslt/0": 0.020, "triton/0": 0.015, "dense/0": 0.010}
    path, reason = sparse.paths["rows=4, float16"]
    assert path == "dense" and reason.startswith("every sparse kernel was slower than dense")
    assert "dense 0.0100 ms, triton 0.0150 ms, cslt/0 0.0200 ms" in reason
    assert "cslt/3: RuntimeError: algorithm 3 is not available" in reason and "gemv: RuntimeError" in reason
    assert torch.equal(sparse._dense, sparse.dense_weight())  # kept: dense won


def test_sparse_wins_and_the_timing_copy_is_dropped(monkeypatch):
    sparse = layer_24(dtype=torch.float16)
    FakeTable(monkeypatch, sparse, {("cslt", 0): 0.020, ("triton", 0): 0.008, DENSE: 0.010})
    assert sparse._cuda_forward(torch.randn(1, 64, dtype=torch.float16)) == 0.008
    path, reason = sparse.paths["rows=1, float16"]
    assert path == "triton" and reason.startswith("fastest of 3 timed in a CUDA graph, L2 flushed: triton 0.0080 ms")
    assert sparse._dense is None  # the unpacked weight existed only for the timing


def test_a_shape_timed_for_one_layer_is_recorded_for_the_next(monkeypatch):
    first, second = layer_24(dtype=torch.float16), layer_24(dtype=torch.float16)
    monkeypatch.setattr(SparseLinear24, "dense_fallback", True)
    FakeTable(monkeypatch, first, {("cslt", 0): 0.020, DENSE: 0.010})
    FakeTable(monkeypatch, second, {("cslt", 0): 0.020, DENSE: 0.010})
    monkeypatch.setattr(second, "_choose", lambda *a: pytest.fail("timed twice"))  # PLANS is shared by shape
    x2 = torch.randn(2, 64, dtype=torch.float16)
    first._cuda_forward(x2)
    second._cuda_forward(x2)
    assert second.paths == first.paths and second.paths["rows=2, float16"][0] == "dense"


def test_untimed_shape_during_graph_capture_says_so(monkeypatch):
    sparse = layer_24(dtype=torch.float16)
    FakeTable(monkeypatch, sparse, {("cslt", 0): 0.020})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    sparse._cuda_forward(torch.randn(3, 64, dtype=torch.float16))
    path, reason = sparse.paths["rows=3, float16, graph capture"]
    assert path == "cslt/0" and "before this row count was timed" in reason and not linear.PLANS


def test_gemv_plan_with_an_unaligned_input_says_it_took_the_library_path(monkeypatch):
    sparse = layer_24(dtype=torch.float16)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", lambda W, xt, bias, alg_id: torch.zeros(48, xt.shape[1]),
                        raising=False)
    x2 = torch.randn(1, 65, dtype=torch.float16)[:, 1:]  # 2 bytes past an aligned start
    assert not triton_decode.permute_ok(x2, sparse.values)
    sparse._run(("gemv", 0), x2, key=(48, 64, 1, torch.float16, True, True))
    path, reason = sparse.paths["rows=1, float16, unaligned input"]
    assert path == "cslt/0" and "not 8-byte aligned" in reason


def test_dense_plan_computes_the_dense_product():
    sparse = layer_24()
    x = torch.randn(5, 64)
    assert torch.allclose(sparse._run(DENSE, x), x @ sparse.dense_weight().T + sparse.bias, atol=1e-6)


def test_tune_counts_rejected_configurations_and_keeps_the_last_reason(monkeypatch, capsys):
    monkeypatch.setenv("PRUNEKIT_LOG", "1")
    monkeypatch.setattr(path_log, "_LOGGED", set())
    monkeypatch.setattr(timing, "copies_past_l2", lambda nbytes: 1)
    monkeypatch.setattr(triton_decode, "TUNED", {})
    monkeypatch.setattr(triton_decode, "REJECTED", {})
    script_time_calls(monkeypatch, [RuntimeError("out of shared memory: 300000 > 232448\ndetails"), 0.5,
                                    ValueError("bad block"), 0.25])
    # the result check before timing: an exact stand-in for the kernel (no GPU here); an all-zero weight passes it
    monkeypatch.setattr(triton_decode, "gemv24", lambda x, v, m, bias=None, config=None: triton_decode.dense_product(x, v, m))
    values = torch.zeros(8, 32, dtype=torch.float16)
    meta = torch.zeros(8, 8, dtype=torch.uint8)
    configs = [{"BLOCK_N": n, "BLOCK_B": 8, "num_warps": 1} for n in (1, 2, 4, 8)]
    best, ms = triton_decode.tune(values, meta, 1, configs, kernel="gemv")
    assert (best, ms) == (configs[3], 0.25)
    rejected = triton_decode.REJECTED[(8, 64, "gemv", torch.float16)]
    assert rejected["count"] == 2 and rejected["last"].endswith("ValueError: bad block")
    assert "prunekit: kernel tune gemv (8, 64): 2 of 4 launch configurations rejected" in capsys.readouterr().err
    monkeypatch.setattr(timing, "time_calls", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no PTX")))
    with pytest.raises(RuntimeError, match=r"no gemv launch configuration compiled .*4 rejected; last: .*no PTX"):
        triton_decode.tune(values, meta, 1, configs, kernel="gemv")


def test_bench_on_cpu_reports_kernel_paths():
    from prunekit.eval.speed import bench
    from prunekit.patterns import keep_n_of_m

    model = tiny_llama()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers"):
                W = module.weight
                W.masked_fill_(~keep_n_of_m(W.abs(), 2, 4), 0.0)
    assert sparsify(model) == 14
    report = bench(model, batch=1, prompt_len=8, gen_len=2, dtype=torch.float32)
    paths = report["kernel_paths"]
    assert len(paths) == 14 and paths["model.layers.0.self_attn.q_proj"]["cpu"][0] == "dense"
    assert report["kernel_path_counts"] == {"dense": 14}
