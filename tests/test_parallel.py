"""--parallel-layers: two gloo processes under torchrun give the same model as one process."""

import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import byte_tokenizer, tiny_llama

SRC = str(Path(__file__).resolve().parents[1] / "src")
FLAGS = ["--method", "fista", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "32", "--eval-data", "none",
         "--quiet", "--lam-steps", "3", "--iters", "5", "--refit-iters", "5", "--device", "cpu"]


def run(args, tmp_path):
    # one thread per process on both sides, so that float reductions run in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    # the subprocesses import this checkout's prunekit, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


CASES = {
    "fista": FLAGS,
    "sparsegpt 2:4": ["--method", "sparsegpt", "--pattern", "2:4", "--nsamples", "4", "--seqlen", "32", "--eval-data",
                      "none", "--quiet", "--device", "cpu"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_single_process_model(tmp_path, text_file, case):
    model_dir = tmp_path / "tiny4"
    tiny_llama(layers=4).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    flags = CASES[case]
    common = ["--model", str(model_dir), "--calib-data", str(text_file), *flags]
    if case != "fista":  # the single process takes the same dense-input route
        common.append("--parallel-layers")

    run([sys.executable, "-m", "prunekit", "prune", *common, "--output", "single"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "prunekit", "prune", *common, *(["--parallel-layers"] if case == "fista" else []), "--output", "multi"],
        tmp_path)

    single = load_file(tmp_path / "single" / "model.safetensors")
    multi = load_file(tmp_path / "multi" / "model.safetensors")
    assert single.keys() == multi.keys()
    pruned = [k for k in single if k.endswith("proj.weight")]
    assert len(pruned) == 4 * 7
    for key in single:
        assert torch.equal(single[key], multi[key]), key
    assert all(float((single[k] == 0).float().mean()) == pytest.approx(0.5, abs=1e-3) for k in pruned)
    assert not (tmp_path / "multi").with_name("multi.tmp").exists()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude", "ria"])
def test_parallel_layers_prune_every_layer_from_dense_inputs(method):
    """With --parallel-layers a layer's result does not depend on the layers before it being pruned: it equals the
    layer pruned alone (--targets that layer: everything before it stays dense, so its inputs are dense)."""
    from conftest import random_windows
    from prunekit import prune
    from prunekit.pruners import PRUNERS

    calib = random_windows(4, 32)
    model = tiny_llama(layers=3)
    alone = tiny_llama(layers=3)
    alone.load_state_dict(model.state_dict())
    result = prune(model, PRUNERS[method](0.5, parallel_layers=True), calib, progress=False)
    assert all(0 < op.recon_error < 1 for op in result.operators)  # measured on the dense inputs
    prune(alone, PRUNERS[method](0.5, targets=("model.layers.2.*",)), calib, progress=False)
    last = {k: v for k, v in model.state_dict().items() if k.startswith("model.layers.2.")}
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in last.items())
    first = model.model.layers[0].mlp.down_proj.weight
    assert float((first == 0).float().mean()) == pytest.approx(0.5, abs=0.02)  # and every layer is pruned


def test_parallel_layers_refuse_intra_inter(tiny_model_dir, text_file, tmp_path, capsys):
    from prunekit.cli import main

    code = main(["prune", "--model", str(tiny_model_dir), "--method", "fista", "--parallel-layers",
                 "--error-correction", "intra+inter", "--calib-data", str(text_file), "--output", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "independent layers" in err[0]
