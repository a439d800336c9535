"""layers.png beside every saved model, and `prunekit report` comparing runs."""

from __future__ import annotations

import json

from conftest import run_cli

PNG = b"\x89PNG\r\n\x1a\n"


def prune(model, text, out, capsys, *extra):
    code, _, err = run_cli(["prune", "--model", model, "--calib-data", text, "--eval-data", text, "--nsamples", 4,
                            "--seqlen", 32, "--eval-seqlen", 64, "--max-eval-segments", 2, "--device", "cpu",
                            "--quiet", "--output", out, *extra], capsys)
    assert code == 0, err
    return out


def test_every_run_writes_layers_png(tiny_model_dir, text_file, tmp_path, capsys):
    out = prune(tiny_model_dir, text_file, tmp_path / "wanda", capsys, "--method", "wanda")
    png = (out / "layers.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000


def test_layers_png_draws_the_training_loss(tiny_model_dir, text_file, tmp_path, capsys):
    from prunekit.eval.plots import training_loss

    out = prune(tiny_model_dir, text_file, tmp_path / "rot", capsys, "--method", "rotpruner", "--steps", 3,
                "--train-samples", 2)
    report = json.loads((out / "report.json").read_text())
    assert len(training_loss(report)) == 3 and (out / "layers.png").read_bytes().startswith(PNG)


def test_report_compares_runs(tiny_model_dir, text_file, tmp_path, capsys):
    a = prune(tiny_model_dir, text_file, tmp_path / "a", capsys, "--method", "wanda")
    b = prune(tiny_model_dir, text_file, tmp_path / "b", capsys, "--method", "magnitude", "--sparsity", 0.6)
    figure = tmp_path / "cmp.png"
    code, out, err = run_cli(["report", a, b, "--output", figure], capsys)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.split(" | ")[0].endswith(("/a", "/b"))]
    achieved = json.loads((b / "report.json").read_text())["achieved_sparsity"]
    assert len(rows) == 2 and "| magnitude |" in rows[1] and f"| {achieved:.4f} |" in rows[1]
    assert figure.read_bytes().startswith(PNG)


def test_report_refuses_a_folder_without_report(tmp_path, capsys):
    code, _, err = run_cli(["report", tmp_path], capsys)
    assert code == 2 and "has no report.json" in err and len(err.strip().splitlines()) == 1
