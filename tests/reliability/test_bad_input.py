"""The issue's bad inputs that used to end in a traceback, a wait or a wrong result: each is one line, exit 2,
before the long work, with nothing written. (The option checks — ranges, NaN, N:M with --sparsity, devices —
are the table in tests/test_cli.py.)"""

from __future__ import annotations

import json
import socket

import pytest

from conftest import TEXT, byte_tokenizer, run_cli, save_tiny

from .conftest import base_args, one_error_line


@pytest.fixture(scope="module")
def compact_dir(model4, text, tmp_path_factory):
    out = tmp_path_factory.mktemp("compact") / "sparse24"
    from prunekit.cli import main

    assert main([str(a) for a in base_args(model4, text, "--pattern", "2:4", "--eval-data", "none",
                                            "--save-format", "compact", "--output", out)]) == 0
    return out


def _refused(argv, capsys, tmp_path, message):
    out = tmp_path / "out"
    code, _, err = run_cli([*argv, "--output", out], capsys)
    assert code == 2 and one_error_line(err) and message in err, err
    assert not out.exists()
    return err


def _edit(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


COMPACT_DAMAGE = {
    "header flip": lambda f: f.write_bytes(f.read_bytes()[:20] + b"\xff\xfe" + f.read_bytes()[22:]),
    "header length": lambda f: f.write_bytes((10**12).to_bytes(8, "little") + f.read_bytes()[8:]),
    "truncated": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "format tag": lambda f: _edit(f, b"prunekit-compact", b"prunekit-compacX"),
    "layout": lambda f: _edit(f, b'\\"scheme\\": \\"2:4\\"', b'\\"scheme\\": \\"4:2\\"'),
}


@pytest.mark.parametrize("damage", list(COMPACT_DAMAGE))
def test_a_damaged_compact_model_is_one_line(damage, compact_dir, text, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(compact_dir, model)
    COMPACT_DAMAGE[damage](model / "model.prunekit.safetensors")
    err = _refused(base_args(model, text), capsys, tmp_path, "could not load model")
    assert str(model) in err  # names the model it could not load


def test_truncated_safetensors_and_gguf_are_one_line(model4, text, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model4, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    err = _refused(base_args(model, text), capsys, tmp_path, "damaged or incomplete")
    assert "save or download the model again" in err
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    err = _refused(base_args(gguf, text), capsys, tmp_path, "could not load model")
    assert "cut.gguf" in err


def test_a_model_folder_without_a_tokenizer_says_so(model4, text, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model4, model, ignore=shutil.ignore_patterns("tokenizer*"))
    err = _refused(base_args(model, text), capsys, tmp_path, "has no tokenizer")
    assert "tokenizer.save_pretrained" in err


def test_an_unknown_hub_name_without_network_fails_at_once(text, tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    err = _refused(base_args("meta-llama/Llama-3.1-8Bx", text), capsys, tmp_path, "cannot be reached")
    assert "check the name" in err


def test_n_m_that_does_not_divide_the_widths_is_refused_before_the_data(model4, text, tmp_path, capsys):
    err = _refused(base_args(model4, text, "--pattern", "2:3"), capsys, tmp_path, "not a multiple of M=3")
    assert "calibration data" not in err  # before the calibration windows and the dense evaluation


def test_a_folder_given_as_data_is_called_a_folder(model4, tmp_path, capsys):
    (tmp_path / "calib").mkdir()
    err = _refused(base_args(model4, tmp_path / "calib"), capsys, tmp_path, "is a folder, not a file")
    assert "not found" not in err


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("opt") / "opt"
    save_tiny(path, "opt")
    return path


@pytest.mark.parametrize("flag", ["--seqlen", "--eval-seqlen"])
def test_windows_longer_than_the_context_are_refused_for_every_family(flag, opt_dir, model4, text, tmp_path, capsys):
    for model in (opt_dir, model4):  # OPT used to crash (IndexError), Llama to extrapolate silently
        argv = base_args(model, text)
        argv[argv.index(flag) + 1] = 600  # both tiny models have 512 positions
        err = _refused(argv, capsys, tmp_path, f"{flag} 600 is longer than the model's context (512 positions)")
        assert f"use {flag} 512 or less" in err


def test_default_windows_shrink_to_a_short_context(opt_dir, text, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a for a in base_args(opt_dir, text) if a not in ("--eval-seqlen", 64)] + ["--output", out]
    long_text = tmp_path / "long.txt"
    long_text.write_text(TEXT * 4)
    argv[argv.index("--eval-data") + 1] = long_text
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["evaluation"]["seqlen"] == 512
    assert "--eval-seqlen 512: the model's context is 512 tokens" in err


def test_another_models_checkpoint_is_refused_before_the_evaluation(model4, text, tmp_path, capsys):
    other = tmp_path / "other"
    from conftest import tiny_llama

    tiny_llama(seed=1, layers=4).save_pretrained(other)  # same shapes, other weights
    byte_tokenizer().save_pretrained(other)
    checkpoints = tmp_path / "checkpoints"
    code, _, err = run_cli(base_args(model4, text, "--method", "sparsegpt", "--checkpoint-dir", checkpoints,
                                     "--output", tmp_path / "first"), capsys)
    assert code == 0, err
    err = _refused(base_args(other, text, "--method", "sparsegpt", "--checkpoint-dir", checkpoints), capsys, tmp_path,
                   "holds the progress of another run (its model differ")
    assert "evaluation data" not in err
    err = _refused(base_args(model4, text, "--method", "sparsegpt", "--checkpoint-dir", checkpoints,
                             "--dtype", "bfloat16"), capsys, tmp_path, "(its model, dtype differ")
