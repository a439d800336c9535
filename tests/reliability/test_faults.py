"""Faults other than a kill: a second run into the same output, SIGTERM, a damaged checkpoint, a disk that
fills up during the save. Each ends in one line; nothing of the user's is lost and nothing half-written stays."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import run_cli
from prunekit.checkpoints import checkpoint_file

from .conftest import assert_bit_identical, base_args, leftovers, one_error_line, run_fault

HOLD_AT = 12  # an MLP forward of layer 1 of the wanda run (8 for the dense evaluation, 2 per layer for the pruning)


def _wait_for(path, process, seconds=300):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_into_the_same_output_is_refused_and_the_first_one_finishes(model4, text, tmp_path, capsys):
    out, gate = tmp_path / "out", tmp_path / "gate"
    gate.mkdir()
    first = run_fault("hold", [HOLD_AT, gate], base_args(model4, text, "--output", out), wait=False)
    _wait_for(gate / "reached", first)
    code, _, err = run_cli(base_args(model4, text, "--output", out), capsys)
    assert code == 2 and "another prunekit run" in err and one_error_line(err)
    code, _, err = run_cli(base_args(model4, text, "--output", out, "--overwrite"), capsys)
    assert code == 2 and "another prunekit run" in err
    (gate / "go").touch()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert (out / "report.json").is_file() and leftovers(tmp_path) == []
    code, _, err = run_cli(base_args(model4, text, "--output", out), capsys)  # done: now it simply exists
    assert code == 2 and "exists" in err and (out / "report.json").is_file()


def test_sigterm_ends_with_130_one_line_and_the_resume_hint(model4, text, tmp_path):
    out, gate, checkpoints = tmp_path / "out", tmp_path / "gate", tmp_path / "checkpoints"
    gate.mkdir()
    run = run_fault("hold", [HOLD_AT, gate], base_args(model4, text, "--output", out, "--checkpoint-dir", checkpoints),
                    wait=False)
    _wait_for(gate / "reached", run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130
    assert stderr.strip().splitlines()[-1] == (f"prunekit: interrupted, nothing saved; rerun the same command to "
                                               f"resume from {checkpoints}")
    assert not out.exists() and leftovers(tmp_path) == [] and checkpoint_file(checkpoints, "layer_0.pt").is_file()


DAMAGE = {  # checkpoint_file: the file the manifest names (every write goes to a new file)
    "truncated progress": lambda ck: checkpoint_file(ck, "progress.pt").write_bytes(checkpoint_file(ck, "progress.pt").read_bytes()[:300]),
    "garbage progress": lambda ck: checkpoint_file(ck, "progress.pt").write_bytes(b"\x00garbage" * 64),
    "truncated layer": lambda ck: checkpoint_file(ck, "layer_0.pt").write_bytes(checkpoint_file(ck, "layer_0.pt").read_bytes()[:200]),
    "missing layer": lambda ck: checkpoint_file(ck, "layer_0.pt").unlink(),
    "garbage layer, same size": lambda ck: checkpoint_file(ck, "layer_0.pt").write_bytes(
        b"\x00" * checkpoint_file(ck, "layer_0.pt").stat().st_size),
    "damaged manifest": lambda ck: (ck / "checkpoint.json").write_text("{"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_in_one_line_and_kept(damage, model4, text, tmp_path, capsys):
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    argv = base_args(model4, text, "--method", "sparsegpt", "--output", out, "--checkpoint-dir", checkpoints)
    killed = run_fault("kill", [14], argv)
    assert killed.returncode == -signal.SIGKILL and checkpoint_file(checkpoints, "layer_0.pt") is not None
    DAMAGE[damage](checkpoints)
    kept = sorted(p.name for p in checkpoints.iterdir())
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and one_error_line(err) and f"delete {checkpoints}" in err, err
    assert not out.exists() and sorted(p.name for p in checkpoints.iterdir()) == kept  # the user decides
    assert leftovers(tmp_path) == []


def test_a_full_disk_during_the_save_saves_nothing_and_the_rerun_resumes(model4, text, tmp_path, capsys):
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    argv = base_args(model4, text, "--method", "sparsegpt", "--output", out, "--checkpoint-dir", checkpoints)
    full = run_fault("disk-full", [], argv)
    assert full.returncode == 2, full.stderr[-2000:]
    last = full.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last and f"resume from {checkpoints}" in last
    assert not out.exists() and leftovers(tmp_path) == []
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    code, _, err = run_cli(base_args(model4, text, "--method", "sparsegpt", "--output", tmp_path / "reference"), capsys)
    assert code == 0, err
    assert_bit_identical(tmp_path / "reference", out)
