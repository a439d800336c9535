"""Kill a run with SIGKILL at a random point inside some layer's work, rerun the same command: the result is
bit-identical to an uninterrupted run, and nothing of the killed run is left beside the output."""

from __future__ import annotations

import json
import random
import signal

import pytest

from conftest import run_cli

from .conftest import assert_bit_identical, base_args, leftovers, run_fault
from .faults import count_mlp_calls

LOSA_SMALL = ["--train-tokens", 192, "--train-seqlen", 32, "--train-batch-size", 2, "--rank", 2, "--rmi-tokens", 32,
              "--feature-windows", 2]
METHODS = {
    "wanda": ["--method", "wanda"],
    "sparsegpt": ["--method", "sparsegpt", "--pattern", "2:4"],
    "fista": ["--method", "fista"],
    "fista-disk": ["--method", "fista", "--offload", "disk"],  # layers streamed from the model's file
    "losa": ["--method", "losa", "--stages", 3, *LOSA_SMALL],
    # (layers kept for backward: recomputing them would double the training's MLP calls, and the kill is meant to
    # land in the base pruner's checkpointed pass, after the saved rotation)
    "rotpruner": ["--method", "rotpruner", "--steps", 4, "--train-samples", 2, "--no-checkpoint-layers"],
    "slicegpt": ["--method", "slicegpt", "--slicing", 0.25],
    "rotpruner-structured": ["--method", "rotpruner", "--pattern", "structured", "--slicing", 0.25, "--steps", 3],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_killed_run_resumes_bit_identical(method, model4, text, tmp_path, capsys):
    extra = METHODS[method] + (["--train-data", text] if method == "losa" else [])
    argv = base_args(model4, text, *extra)
    with count_mlp_calls() as calls:
        code, _, err = run_cli(argv + ["--output", tmp_path / "reference"], capsys)
    assert code == 0, err

    kill_at = random.Random(method).randint(calls[0] // 2, calls[0] * 9 // 10)  # reproducible "random"
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    killed = run_fault("kill", [kill_at], argv + ["--output", out, "--checkpoint-dir", checkpoints])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists() and any(checkpoints.rglob("*.pt")), f"killed at MLP call {kill_at} of {calls[0]}"

    code, _, err = run_cli(argv + ["--output", out, "--checkpoint-dir", checkpoints], capsys)
    assert code == 0, err
    assert_bit_identical(tmp_path / "reference", out)
    reference, resumed = (json.loads((d / "report.json").read_text()) for d in (tmp_path / "reference", out))
    assert resumed["ppl"] == reference["ppl"] and resumed["achieved_sparsity"] == reference["achieved_sparsity"]
    assert leftovers(tmp_path) == []
