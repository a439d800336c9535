"""Shared pieces of the reliability suite: a 4-layer tiny Llama on disk and a runner for faults.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TEXT, byte_tokenizer, tiny_llama

FAULTS = Path(__file__).with_name("faults.py")


@pytest.fixture(scope="session")
def model4(tmp_path_factory):
    """A 4-layer tiny Llama saved with its tokenizer: more layers, more places to break a run."""
    path = tmp_path_factory.mktemp("reliability") / "llama4"
    tiny_llama(layers=4).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability-data") / "text.txt"
    path.write_text(TEXT)
    return path


def base_args(model, text, *extra):
    return ["prune", "--model", model, "--calib-data", text, "--eval-data", text, "--nsamples", 4, "--seqlen", 32,
            "--eval-seqlen", 64, "--max-eval-segments", 2, "--device", "cpu", "--quiet", *extra]


def run_fault(mode: str, options: list, argv: list, timeout: float = 600, wait: bool = True):
    """`python faults.py MODE OPTIONS -- ARGV` in a child process: the CompletedProcess, or the Popen if not `wait`."""
    command = [sys.executable, str(FAULTS), mode, *map(str, options), "--", *map(str, argv)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    differ = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, first {differ[0]}"


def leftovers(folder: Path) -> list[str]:
    """Temporary folders and locks a run may leave beside its output (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or
                                                                                  p.name.endswith(".lock")))


def one_error_line(stderr: str) -> bool:
    """The run ended in exactly one `prunekit: error:` line, its last, and no traceback (earlier lines are the
    run's progress notes)."""
    lines = stderr.strip().splitlines()
    return bool(lines) and lines[-1].startswith("prunekit: error: ") and "Traceback" not in stderr and \
        sum(line.startswith("prunekit: error") for line in lines) == 1
