"""Zero-shot through lm-eval: prunekit's task configs over the local files of ../shared/data/zeroshot."""

import json
import math

import pytest

from conftest import SHARED_DATA, save_tiny
from prunekit.cli import main
from prunekit.errors import UsageError
from prunekit.eval import zeroshot

ZEROSHOT = SHARED_DATA / "zeroshot"
needs_data = pytest.mark.skipif(not ZEROSHOT.is_dir(), reason="needs ../shared/data/zeroshot")
#: what each shipped config may change in lm-eval's standard task: the data source, nothing else
DATA_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split"}


def test_every_documented_task_has_a_config():
    assert zeroshot.task_names() == sorted(zeroshot.EXAMPLES)
    assert set(zeroshot.task_names()) == {"boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                          "openbookqa", "piqa"}


@needs_data
@pytest.mark.parametrize("name", zeroshot.task_names())
def test_config_is_the_standard_task_with_local_data(name, tmp_path):
    """The written config, with includes resolved, equals lm-eval's own task but for the data source keys,
    and lm-eval loads from it exactly the documented number of evaluation documents."""
    from lm_eval.tasks._yaml_loader import load_yaml

    (path,) = zeroshot.write_task_configs(ZEROSHOT, tmp_path, [name])
    ours = load_yaml(path, resolve_func=False)
    standard = load_yaml(zeroshot.lm_eval_tasks_dir() / zeroshot._template(name)["include"], resolve_func=False)
    assert ours["task"] == standard["task"] == name
    differing = {key for key in set(ours) | set(standard) if ours.get(key) != standard.get(key)}
    assert differing <= DATA_KEYS, differing
    assert ours["dataset_path"] == "json"
    (split, file), = ours["dataset_kwargs"]["data_files"].items()
    assert split == (ours.get("test_split") or ours.get("validation_split")) and file.startswith(str(ZEROSHOT))

    task = zeroshot.load_tasks([name], ZEROSHOT, progress=False)[name]
    docs = list(task.eval_docs)
    assert len(docs) == zeroshot.EXAMPLES[name]
    assert all(len(task.doc_to_choice(doc)) >= 2 for doc in docs[:50])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-zs") / "llama")


@needs_data
def test_eval_limit_gives_accuracy_and_stderr_for_every_task(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    names = zeroshot.task_names()
    code = main(["eval", "--model", str(tiny_dir), "--tasks", ",".join(names), "--task-data", str(ZEROSHOT),
                 "--limit", "2", "--batch-size", "4", "--output", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.read_text())
    assert list(report["zero_shot"]) == names and report["ppl"] == {}
    for name, score in report["zero_shot"].items():
        assert 0 <= score["acc"] <= 1 and math.isfinite(score["acc_stderr"]) and score["acc_stderr"] >= 0, name
        assert score["examples"] == 2 and score["split_examples"] == zeroshot.EXAMPLES[name]
        assert 0 < score["chance"] < 1
        assert f"| {name} acc |" in stdout
    mean = report["zero_shot_mean"]
    assert mean["metric"] == "acc" and mean["value"] == pytest.approx(
        sum(s["acc"] for s in report["zero_shot"].values()) / len(names))
    settings = report["evaluation"]["zero_shot"]
    assert settings["limit"] == 2 and settings["add_bos_token"] is False and settings["task_data"] == str(ZEROSHOT)
    assert "--limit" in stdout and "mean acc (8 tasks)" in stdout


@needs_data
def test_in_process_scores_match_a_saved_model_evaluated_by_lm_eval(tiny_dir):
    """prunekit's HFLM-around-the-model path and lm-eval's own loading of the saved directory agree exactly."""
    from lm_eval import simple_evaluate
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tasks = zeroshot.load_tasks(["arc_easy", "winogrande"], ZEROSHOT, progress=False)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    ours = zeroshot.zero_shot(model, tokenizer, tasks, batch_size=2, limit=5, add_bos_token=False, progress=False)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={tiny_dir},add_bos_token=False", batch_size=2,
                             tasks=list(zeroshot.load_tasks(["arc_easy", "winogrande"], ZEROSHOT).values()),
                             limit=5, log_samples=False, device="cpu")
    for name, score in ours.items():
        assert score.acc == theirs["results"][name]["acc,none"]
        assert score.acc_stderr == theirs["results"][name]["acc_stderr,none"]


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown zero-shot task 'lambada'"):
        zeroshot.check_tasks(["lambada"])
    with pytest.raises(UsageError, match=r"zero-shot task boolq: data file .*boolq.validation.jsonl not found"):
        zeroshot.check_tasks(["boolq"], tmp_path)


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "boolq,lambada"], "unknown task 'lambada'"),
    (["--tasks", "boolq", "--task-data", "{empty}"], "boolq.validation.jsonl not found"),
    (["--tasks", "boolq", "--task-data", "{empty}/nope"], "is not a folder"),
    (["--tasks", "/no/such/c4.jsonl"], "not found"),
    (["--tasks", "boolq", "--limit", "0"], "--limit must be a positive integer"),
])
def test_bad_task_input_exits_2_with_one_line(argv, message, tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "eval.json"
    argv = [a.replace("{empty}", str(empty)) for a in argv]
    code = main(["eval", "--model", str(tiny_dir), *argv, "--output", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == "" and not out.exists()


def test_prune_with_unknown_eval_task_leaves_nothing(tiny_dir, tmp_path, capsys):
    code = main(["prune", "--model", str(tiny_dir), "--eval-tasks", "boolq,nosuch", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown task 'nosuch'" in err and list(tmp_path.iterdir()) == []


@needs_data
def test_task_configs_command_writes_configs_for_lm_eval(tmp_path, capsys):
    code = main(["task-configs", "--task-data", str(ZEROSHOT), "--output", str(tmp_path / "cfg"), "--tasks", "rte,piqa"])
    assert code == 0 and "--include_path" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["piqa.yaml", "rte.yaml"]
