import json
import subprocess
import sys

import pytest
import torch

from conftest import random_windows, run_cli as run, tiny_llama, write_arc
from prunekit import SparseGPTConfig, WandaConfig, get_adapter, prune
from prunekit.cli import main
from prunekit.errors import UsageError
from prunekit.patterns import max_nonzeros_per_group


def small_prune_args(model_dir, text_file, output, *extra):
    return ["prune", "--model", model_dir, "--calib-data", text_file, "--eval-data", text_file,
            "--nsamples", 4, "--seqlen", 32, "--eval-seqlen", 64, "--max-eval-segments", 2,
            "--output", output, "--device", "cpu", "--quiet", *extra]


def test_prune_writes_model_and_report(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, _ = run(small_prune_args(tiny_model_dir, text_file, out, "--method", "sparsegpt",
                                           "--pattern", "2:4"), capsys)
    assert code == 0, stdout
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "sparsegpt" and report["pattern"] == "2:4"
    assert report["target_sparsity"] == 0.5 and abs(report["achieved_sparsity"] - 0.5) < 1e-9
    assert set(report["ppl"]) == {"dense", "pruned"} and report["ppl"]["pruned"]["text"] > 0
    assert {"calibration", "pruning", "eval"} <= set(report["timings"])
    assert len(report["layers"]) == 14 and all({"name", "sparsity", "recon_error"} <= set(op) for op in report["layers"])
    assert "perplexity" in stdout

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    by_name = dict(reloaded.named_modules())
    for op in report["layers"]:
        weight = by_name[op["name"]].weight
        assert max_nonzeros_per_group(weight, 4) <= 2
        assert (weight == 0).float().mean().item() == pytest.approx(op["sparsity"])


def test_saved_model_reloads_with_exactly_the_same_zeros(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama()
    prune(model, SparseGPTConfig(0.6), random_windows(), progress=False)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    adapter = get_adapter(reloaded)
    zeros = sum(int((op.weight == 0).sum()) for layer in adapter.layers() for _, op in adapter.linears(layer))
    assert zeros > 0


@pytest.fixture(scope="module")
def not_a_model(tmp_path_factory):
    return tmp_path_factory.mktemp("empty")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import byte_tokenizer

    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256)).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


BAD_INPUTS = [
    (["--sparsity", "1.0"], "outside [0, 1)"),
    (["--sparsity", "-0.1"], "outside [0, 1)"),
    (["--pattern", "5:4"], "N <= M"),
    (["--pattern", "2:0"], "M must be a positive integer"),
    (["--pattern", "2:x"], "unknown pattern"),
    (["--method", "obs"], "unknown method"),
    (["--calib-data", "/no/such/calib.txt"], "not found"),
    (["--eval-data", "/no/such/eval.txt"], "not found"),
    (["--no-update", "--method", "wanda"], "does not apply"),
    # every numeric option is checked (range, NaN) before the model is loaded
    (["--method", "sparsegpt", "--blocksize", "-1"], "--blocksize must be >= 1"),
    (["--method", "sparsegpt", "--pattern", "2:4", "--blocksize", "-4"], "--blocksize must be >= 1"),
    (["--method", "sparsegpt", "--percdamp", "nan"], "--percdamp must be a finite number"),
    (["--method", "sparsegpt", "--percdamp", "0"], "--percdamp must be > 0"),
    (["--method", "fista", "--refit-damp", "nan"], "--refit-damp must be a finite number"),
    (["--method", "rotpruner", "--kl-weight", "nan"], "--kl-weight must be a finite number"),
    (["--pattern", "2:4", "--sparsity", "0.3"], "drop --sparsity"),
    (["--device", "cpux"], "unknown device"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_no_output(extra, message, tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, out, *extra), capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_models_and_outputs(tiny_model_dir, not_a_model, gpt2_dir, text_file, tmp_path, capsys):
    cases = [
        (not_a_model, tmp_path / "o1", "not a model directory"),
        (tmp_path / "missing-model", tmp_path / "o2", "does not exist"),
        (gpt2_dir, tmp_path / "o3", "unsupported architecture 'gpt2'"),
        (tiny_model_dir, "/proc/prunekit-out", "cannot write output"),
        (tiny_model_dir, tmp_path / "a-file" / "sub" / "dir", "is a file, not a folder"),
    ]
    (tmp_path / "a-file").write_text("not a folder")
    for model, out, message in cases:
        code, _, err = run(small_prune_args(model, text_file, out), capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (message, err)
        assert not __import__("os").path.exists(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_missing_parent_folders_of_the_output_are_created(tiny_model_dir, text_file, tmp_path, capsys):
    """A fresh clone has no runs/ folder: `--output runs/x` creates it, with the user's usual permissions."""
    import os

    out = tmp_path / "runs" / "nested" / "out"
    old = os.umask(0o022)
    try:
        code, _, err = run(small_prune_args(tiny_model_dir, text_file, out), capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (out / "report.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary folder left beside it
    assert out.stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700
    assert {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}["model.safetensors"] == 0o644  # not 0600


def test_existing_output_needs_overwrite(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, out), capsys)
    assert code == 2 and "already exists" in err and (out / "keep.txt").exists()
    # --overwrite replaces only what prunekit wrote: a folder of the user's is refused, untouched
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, out, "--overwrite"), capsys)
    assert code == 2 and "replaces only a prunekit output" in err and (out / "keep.txt").read_text() == "mine"
    done = tmp_path / "done"
    assert run(small_prune_args(tiny_model_dir, text_file, done), capsys)[0] == 0
    first = (done / "report.json").read_text()
    code, _, _ = run(small_prune_args(tiny_model_dir, text_file, done, "--overwrite", "--seed", "1"), capsys)
    assert code == 0 and (done / "report.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "out"]  # no lock or temporary folder left


def test_an_output_is_claimed_for_the_whole_run(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    """A live run's lock refuses a second run; a dead run's lock and temporary folder are cleaned up; a folder
    that appears at the output during the run is left alone and the result is kept beside it."""
    import os

    import prunekit.api

    out = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(str(os.getpid()))  # a live process holds it
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, out), capsys)
    assert code == 2 and f"another prunekit run (process {os.getpid()})" in err and not out.exists()
    (tmp_path / ".out.lock").write_text("999999999")  # its process is gone
    (tmp_path / ".out.tmp-killed").mkdir()
    assert run(small_prune_args(tiny_model_dir, text_file, out), capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    real_prune = prunekit.api.prune

    def prune_while_the_user_writes(model, *args, **kwargs):
        late.mkdir()
        (late / "notes.txt").write_text("mine")
        return real_prune(model, *args, **kwargs)

    late = tmp_path / "late"
    monkeypatch.setattr(prunekit.api, "prune", prune_while_the_user_writes)
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, late), capsys)
    kept = tmp_path / f"late.prunekit-{os.getpid()}"
    assert code == 2 and "appeared during the run and was left alone" in err and str(kept) in err
    assert (late / "notes.txt").read_text() == "mine" and (kept / "report.json").is_file()


def test_failure_mid_run_leaves_no_output(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    import prunekit.api

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while pruning")

    monkeypatch.setattr(prunekit.api, "prune", boom)
    with pytest.raises(RuntimeError):
        main([str(a) for a in small_prune_args(tiny_model_dir, text_file, tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):  # parent folders the run created go too
        main([str(a) for a in small_prune_args(tiny_model_dir, text_file, tmp_path / "new" / "sub" / "out")])
    assert list(tmp_path.iterdir()) == []


def test_eval_prints_json_for_perplexity_and_a_table_for_tasks(tiny_model_dir, text_file, capsys):
    args = ["eval", "--model", tiny_model_dir, "--eval-data", text_file, "--eval-seqlen", 64, "--max-eval-segments", 2,
            "--quiet"]
    code, stdout, _ = run(args, capsys)  # issue 2's contract: perplexity only → a JSON object with "ppl"
    report = json.loads(stdout)
    assert code == 0 and report["ppl"]["text"] > 1 and report["evaluation"]["bos_mode"] == "auto"
    assert report["evaluation"]["bos"] is False and report["zero_shot"] == {}
    code, stdout, _ = run(args + ["--tasks", str(text_file)], capsys)
    assert code == 0 and "| perplexity text |" in stdout


def test_prune_puts_dense_and_pruned_zero_shot_side_by_side(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    data = write_arc(tmp_path / "tasks")
    code, stdout, _ = run(small_prune_args(tiny_model_dir, text_file, out, "--eval-tasks", "arc_easy",
                                           "--task-data", data, "--eval-bos", "never"), capsys)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["zero_shot"]) == {"dense", "pruned"}
    for column in ("dense", "pruned"):
        score = report["zero_shot"][column]["arc_easy"]
        assert 0 <= score["acc"] <= 1 and score["examples"] == 3
        assert report["zero_shot_mean"][column] == {"metric": "acc", "value": score["acc"], "tasks": ["arc_easy"]}
    settings = report["evaluation"]
    assert settings["bos_mode"] == "never" and settings["zero_shot"]["add_bos_token"] is False
    assert "| | dense | pruned |" in report["table"] and "| arc_easy acc |" in report["table"]
    assert report["table"] in stdout


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunekit", "prune", "--sparsity", "2", "--output", tmp_path / "o"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "prunekit: error: sparsity 2.0 is outside [0, 1): pass a fraction such as 0.5"


def test_prune_compact_format_reloads_with_prunekit(tiny_model_dir, text_file, tmp_path, capsys):
    from prunekit import load_model

    out = tmp_path / "compact"
    code, _, _ = run(small_prune_args(tiny_model_dir, text_file, out, "--pattern", "2:4", "--save-format", "compact"),
                     capsys)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["saved"]["format"] == "compact" and report["saved"]["bytes"] < report["saved"]["dense_bytes"]
    model, _ = load_model(str(out))
    weight = model.model.layers[0].mlp.up_proj.weight
    assert max_nonzeros_per_group(weight, 4) <= 2


def test_quantize_fp8_saves_a_compact_2_4_fp8_model(tiny_model_dir, text_file, tmp_path, capsys):
    """--quantize fp8: SparseGPT's one pass prunes and rounds, the saved linears are 2:4+fp8 and reload as such;
    without --save-format compact the run is refused before the model loads."""
    from safetensors import safe_open

    from prunekit import load_model
    from prunekit.export import COMPACT_FILE

    refused = tmp_path / "hf"
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, refused, "--method", "sparsegpt", "--pattern",
                                        "2:4", "--quantize", "fp8"), capsys)
    assert code == 2 and "--save-format compact" in err and len(err.strip().splitlines()) == 1
    assert not refused.exists()
    out = tmp_path / "fp8"
    code, _, _ = run(small_prune_args(tiny_model_dir, text_file, out, "--method", "sparsegpt", "--pattern", "2:4",
                                      "--quantize", "fp8", "--save-format", "compact",
                                      "--ignore", "model.layers.0.mlp.down_proj"), capsys)
    assert code == 0
    with safe_open(str(out / COMPACT_FILE), "pt") as f:
        layout = json.loads(f.metadata()["layout"])
    schemes = {name: entry["scheme"] for name, entry in layout.items()
               if ".layers." in name and name.endswith("proj.weight")}
    ignored = "model.layers.0.mlp.down_proj.weight"
    assert schemes.pop(ignored) == "dense" and set(schemes.values()) == {"2:4+fp8"}  # what --ignore leaves is left
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["ppl"]["pruned"]["text"] < float("inf")  # evaluated with the FP8 layers (W8A8)
    assert report["parameters"]["after"] == report["parameters"]["before"]  # FP8 buffers are still weights
    model, _ = load_model(str(out))
    assert max_nonzeros_per_group(model.model.layers[0].mlp.up_proj.dense_weight(), 4) <= 2
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    with pytest.raises(UsageError, match="compact model's packed layer"):  # not pruned again: FP8 codes are no weights
        prune(model, SparseGPTConfig(pattern="2:4"), random_windows(2, 16), progress=False)


def test_bench_on_cpu_is_dense_only(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, stdout, err = run(["bench", "--model", tiny_model_dir, "--device", "cpu", "--prompt-len", 16,
                             "--gen-len", 2, "--output", out], capsys)
    assert code == 0 and "dense model only" in err
    report = json.loads(out.read_text())
    assert report["dense"]["prefill_tokens_per_s"] > 0 and "sparse" not in report
    assert out.with_suffix(".png").stat().st_size > 1000


def test_non_utf8_calibration_text_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import prunekit.cli

    monkeypatch.setattr(prunekit.cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1") * 100)
    code, _, err = run(["prune", "--calib-data", bad, "--output", tmp_path / "out"], capsys)
    assert code == 2 and "is not UTF-8 text" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_dir_that_is_a_file_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import prunekit.cli

    monkeypatch.setattr(prunekit.cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run(["prune", "--checkpoint-dir", tmp_path / "notes.txt", "--output", tmp_path / "out"], capsys)
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()


def test_nm_pattern_implies_its_sparsity_and_refuses_another():
    assert WandaConfig(pattern="1:4").sparsity == 0.75 and WandaConfig(sparsity=0.5, pattern="2:4").sparsity == 0.5
    assert WandaConfig().sparsity == 0.5
    with pytest.raises(ValueError, match="drop --sparsity"):
        WandaConfig(sparsity=0.3, pattern="2:4")


def test_a_result_with_nan_weights_is_never_saved(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    import prunekit.api

    real_prune = prunekit.api.prune

    def prune_to_nan(model, *args, **kwargs):
        result = real_prune(model, *args, **kwargs)
        next(model.parameters()).data.fill_(float("nan"))
        return result

    monkeypatch.setattr(prunekit.api, "prune", prune_to_nan)
    out = tmp_path / "out"
    code, _, err = run(small_prune_args(tiny_model_dir, text_file, out, "--skip-dense-eval"), capsys)
    last = err.strip().splitlines()[-1]  # after the run's progress log, one error line
    assert code == 2 and last.startswith("prunekit: error:") and "NaN/Inf" in last and "nothing saved" in last
    assert err.count("error") == 1 and list(tmp_path.iterdir()) == []


def test_sigterm_mid_run_removes_the_temporary_output_and_says_how_to_resume(tiny_model_dir, text_file, tmp_path):
    """A real process, terminated while pruning: exit 130, one line with the resume hint, nothing left behind
    but the checkpoints."""
    import os
    import signal
    import time

    out, ckpt, started = tmp_path / "out", tmp_path / "ckpt", tmp_path / "started"
    script = (f"import pathlib, time, prunekit.api, prunekit.cli\n"
              f"def slow(*a, **k):\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(60)\n"
              f"prunekit.api.prune = slow\n"
              f"raise SystemExit(prunekit.cli.main({[str(a) for a in small_prune_args(tiny_model_dir, text_file, out)] + ['--checkpoint-dir', str(ckpt)]!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started.exists(), proc.stderr.read() if proc.poll() is not None else "the run did not reach pruning"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == f"prunekit: interrupted, nothing saved; rerun the same command to resume from {ckpt}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ckpt") == ["started"]


def test_bench_fp8_variants_on_cpu_measure_copies_and_leave_the_model_alone():
    """fp8_variants measures dense FP8 and 2:4 + FP8 copies of a 2:4 model (here through the exact CPU reference
    products): every decoder linear packed, weights smaller at each step, the original model unchanged."""
    from prunekit.eval.speed import fp8_variants, weight_mb
    from prunekit.patterns import keep_n_of_m

    model = tiny_llama()
    for layer in get_adapter(model).layers():
        for _, op in get_adapter(model).linears(layer):
            op.weight.data.masked_fill_(~keep_n_of_m(op.weight.data.abs(), 2, 4), 0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fp8_variants(model, batch=1, prompt_len=8, gen_len=2)
    assert out["layers_converted_fp8"] == 2 * 7
    assert all(out[v]["prefill_tokens_per_s"] > 0 and out[v]["decode_tokens_per_s"] > 0
               for v in ("dense_fp8", "sparse_fp8"))
    assert out["sparse_fp8"]["weights_mb"] < out["dense_fp8"]["weights_mb"] < weight_mb(model)
    assert {path for paths in out["kernel_paths_fp8"].values() for path, _ in paths.values()} == {"reference"}
    assert len(out["kernel_paths_fp8"]) == 14
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear


def test_bench_convert_choice_is_checked(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(["bench", "--model", tiny_model_dir, "--device", "cpu", "--convert", "some",
                        "--output", tmp_path / "b.json"], capsys)
    assert code == 2 and "invalid choice" in err and not (tmp_path / "b.json").exists()
