"""RunCheckpoint: a kill at any point of a write leaves a folder the same run resumes from."""

import torch

from conftest import random_windows, tiny_llama
from prunekit import WandaConfig
from prunekit.checkpoints import RunCheckpoint, checkpoint_file


def _open(folder, model, calib):
    return RunCheckpoint(folder, WandaConfig(0.5), calib, model)


def test_a_write_killed_before_the_manifest_switched_keeps_the_previous_state(tmp_path):
    model, calib = tiny_llama(), random_windows()
    ck = _open(tmp_path, model, calib)
    ck.write("progress.pt", {"next_layer": 1})
    ck.write("progress.pt", {"next_layer": 2})
    assert ck.read("progress.pt") == {"next_layer": 2}
    # a third write whose file landed but whose manifest update did not (killed in between)
    (tmp_path / "progress.9.pt").write_bytes(b"new state, never recorded")
    (tmp_path / "layer_3.10.pt.tmp").write_bytes(b"half a file")
    reopened = _open(tmp_path, model, calib)
    assert reopened.read("progress.pt") == {"next_layer": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", checkpoint_file(tmp_path, "progress.pt").name]


def test_a_first_write_killed_leaves_a_folder_that_opens(tmp_path):
    model, calib = tiny_llama(), random_windows()
    _open(tmp_path, model, calib)  # the manifest is written when the folder is opened
    (tmp_path / "rotation.0.pt").write_bytes(b"killed mid-way")
    assert _open(tmp_path, model, calib).read("rotation.pt") is None


def test_tensors_come_back_on_the_cpu(tmp_path):
    model, calib = tiny_llama(), random_windows()
    ck = _open(tmp_path, model, calib)
    ck.write("state.pt", {"w": torch.ones(3)})
    assert ck.read("state.pt")["w"].device.type == "cpu"
