import json

import pytest

from conftest import run_cli as run

LOSA_SMALL = ["--train-tokens", 128, "--train-seqlen", 32, "--train-batch-size", 2, "--rank", 2,
              "--rmi-tokens", 32, "--feature-windows", 2]


def prune_args(model_dir, text_file, output, *extra):
    return ["prune", "--model", model_dir, "--calib-data", text_file, "--eval-data", text_file,
            "--nsamples", 4, "--seqlen", 32, "--eval-seqlen", 64, "--max-eval-segments", 2, "--skip-dense-eval",
            "--output", output, "--device", "cpu", "--quiet", "--method", "losa", "--sparsity", 0.5,
            "--train-data", text_file, *LOSA_SMALL, *extra]


def test_prune_losa_writes_a_sparse_model_and_stage_details(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "losa"
    code, stdout, err = run(prune_args(tiny_model_dir, text_file, out, "--stages", 2), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "losa" and report["config"]["base_pruner"] == "wanda"
    assert len(report["details"]["stages"]) == 2 and report["details"]["mask_check"]["nonzero_outside_mask"] == 0
    assert abs(report["achieved_sparsity"] - 0.5) < 0.02 and report["ppl"]["pruned"]["text"] > 0

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    zeros = sum(int((m.weight == 0).sum()) for n, m in reloaded.named_modules() if n.endswith("_proj"))
    assert zeros == report["details"]["mask_check"]["merged_zeros"]


def test_finetune_an_already_pruned_model_keeps_its_zeros(tiny_model_dir, text_file, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    code, _, err = run(["prune", "--model", tiny_model_dir, "--calib-data", text_file, "--eval-data", "none",
                        "--nsamples", 4, "--seqlen", 32, "--output", pruned, "--quiet", "--sparsity", 0.6], capsys)
    assert code == 0, err
    tuned = tmp_path / "tuned"
    code, stdout, err = run(["finetune", "--model", pruned, "--train-data", text_file, "--eval-data", text_file,
                             "--eval-seqlen", 64, "--max-eval-segments", 2, "--output", tuned, "--quiet",
                             "--train-tokens", 128, "--train-seqlen", 32, "--rank", 2], capsys)
    assert code == 0, err
    report = json.loads((tuned / "report.json").read_text())
    assert report["sparsity_before"] == report["sparsity_after"] > 0.5
    assert set(report["ppl"]) == {"before", "after"} and "->" in stdout


@pytest.mark.parametrize("extra,message", [
    (["--adapter", "dense"], "--stages 1"),
    (["--rank", 0], "positive"),
    (["--base-pruner", "obs"], "base-pruner"),
    (["--rmi-kernel", "cosine"], "rmi-kernel"),
])
def test_bad_losa_flags_exit_2_with_one_line_and_no_output(tiny_model_dir, text_file, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    code, stdout, err = run(prune_args(tiny_model_dir, text_file, out, *extra), capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_training_data_is_reported_before_loading(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "never"
    args = prune_args(tiny_model_dir, text_file, out)
    args[args.index("--train-data") + 1] = str(tmp_path / "alpaca.json")
    code, _, err = run(args, capsys)
    assert code == 2 and "not found" in err and not out.exists()
    code, _, err = run(["finetune", "--model", tiny_model_dir, "--train-data", tmp_path / "x.json",
                        "--output", out], capsys)
    assert code == 2 and "not found" in err and not out.exists()


def test_losa_flag_on_another_method_is_rejected(tiny_model_dir, text_file, tmp_path, capsys):
    code, _, err = run(["prune", "--model", tiny_model_dir, "--method", "wanda", "--stages", 3,
                        "--output", tmp_path / "x"], capsys)
    assert code == 2 and "--stages does not apply to --method wanda" in err
