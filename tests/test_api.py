"""BOS handling per model family and the task list split, through the library verbs."""

import pytest
import torch

from conftest import TEXT, byte_tokenizer, save_tiny, tiny_gemma, tiny_llama, write_arc
from prunekit import api
from prunekit.errors import UsageError
from prunekit.eval import zeroshot


class InputRecorder:
    """Records the input_ids of every forward pass of a model."""

    def __init__(self, model):
        self.rows: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows.extend(ids)


@pytest.mark.parametrize("factory,mode,expect_bos", [
    (tiny_llama, "always", True), (tiny_llama, "never", False), (tiny_llama, "auto", False),
    (tiny_gemma, "always", True), (tiny_gemma, "never", False), (tiny_gemma, "auto", True),
])
def test_every_evaluated_window_starts_with_bos_exactly_when_asked(factory, mode, expect_bos, text_file):
    model, tokenizer = factory(), byte_tokenizer()
    bos = api.bos_id(model, tokenizer, mode)
    assert (bos == tokenizer.bos_token_id) if expect_bos else bos is None
    sets = api.evaluation_sets(tokenizer, [str(text_file)], seqlen=64, max_segments=5, bos=bos)
    recorder = InputRecorder(model)
    api.evaluate(model, sets, batch_size=2, bos=bos, progress=False)
    assert len(recorder.rows) == 5
    firsts = [int(row[0]) for row in recorder.rows]
    if expect_bos:
        assert firsts == [tokenizer.bos_token_id] * 5
    else:
        assert tokenizer.bos_token_id not in firsts
        assert TEXT[0] == "T"  # so the plain windows start with text, not with the BOS character


def test_bos_always_needs_a_bos_token():
    tokenizer = byte_tokenizer()
    tokenizer.bos_token = None
    with pytest.raises(UsageError, match="no BOS token"):
        api.bos_id(tiny_llama(), tokenizer, "always")
    with pytest.raises(UsageError, match="unknown BOS mode"):
        api.bos_id(tiny_llama(), byte_tokenizer(), "sometimes")


@pytest.mark.parametrize("add_bos", [True, False])
def test_zero_shot_prompts_start_with_bos_exactly_when_asked(add_bos, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = save_tiny(tmp_path / "gemma", "gemma", add_bos=True)  # the tokenizer adds BOS, as Gemma's does
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    tasks = zeroshot.load_tasks(["arc_easy"], write_arc(tmp_path / "data"), progress=False)
    recorder = InputRecorder(model)
    scores = zeroshot.zero_shot(model, tokenizer, tasks, batch_size=1, add_bos_token=add_bos, progress=False)
    assert scores["arc_easy"].examples == 3 and scores["arc_easy"].chance == pytest.approx(1 / 3)
    assert len(recorder.rows) == 9  # 3 questions × 3 choices
    firsts = {int(row[0]) for row in recorder.rows}
    assert firsts == {tokenizer.bos_token_id} if add_bos else tokenizer.bos_token_id not in firsts


def test_split_tasks(text_file):
    assert api.split_tasks(["wikitext2", "boolq", str(text_file), "c4", "piqa"]) == (
        ["wikitext2", str(text_file), "c4"], ["boolq", "piqa"])
    with pytest.raises(UsageError, match="unknown task 'mmlu'"):
        api.split_tasks(["mmlu"])
    with pytest.raises(UsageError, match="not found"):
        api.split_tasks(["missing/c4.validation.jsonl"])


def test_the_library_saves_what_the_cli_saves(tiny_model_dir, text_file, tmp_path, capsys):
    """prunekit.prune(...).save(dir) writes the same weights and the same report fields as `prunekit prune`;
    the CLI adds only what it alone knows (data sources, evaluations, environment)."""
    import json

    from conftest import run_cli
    from prunekit import SparseGPTConfig, calibration, load_model, prune
    from prunekit.artifact import PrunedModel

    cli_out, lib_out = tmp_path / "cli", tmp_path / "lib"
    code, _, err = run_cli(["prune", "--model", tiny_model_dir, "--calib-data", text_file, "--eval-data", "none",
                            "--nsamples", 4, "--seqlen", 32, "--method", "sparsegpt", "--pattern", "2:4",
                            "--output", cli_out, "--quiet"], capsys)
    assert code == 0, err
    model, tokenizer = load_model(str(tiny_model_dir))
    calib, _ = calibration(tokenizer, str(text_file), 4, 32, 0, None)
    result = prune(model, SparseGPTConfig(pattern="2:4"), calib, progress=False)
    assert isinstance(result, PrunedModel) and result.achieved_sparsity == 0.5  # reads through to the PruneResult
    result.save(lib_out)

    from safetensors.torch import load_file

    a, b = load_file(cli_out / "model.safetensors"), load_file(lib_out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cli, lib = (json.loads((d / "report.json").read_text()) for d in (cli_out, lib_out))
    assert set(lib) <= set(cli)
    for key in ("method", "pattern", "target_sparsity", "achieved_sparsity", "config", "parameters", "saved"):
        assert lib[key] == cli[key], key
    assert [op["name"] for op in lib["layers"]] == [op["name"] for op in cli["layers"]]
    assert lib["calibration"].items() <= cli["calibration"].items()
