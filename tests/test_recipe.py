"""Recipes (prunekit.recipe) and operator selection (--targets/--ignore): a saved model's recipe.yaml reproduces
its weights bit for bit, flags on the command line win over the recipe, bad recipes and regexes are one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_windows, run_cli as run, tiny_llama
from prunekit import get_adapter, prune
from prunekit.cli import _method_config, _recipe, build_parser, method_configs
from prunekit.errors import UsageError
from prunekit.recipe import parse_args


def small_args(model_dir, text_file, output, *extra):
    return ["prune", "--model", model_dir, "--calib-data", text_file, "--eval-data", "none", "--nsamples", 4,
            "--seqlen", 32, "--eval-seqlen", 64, "--device", "cpu", "--quiet", "--output", output, *extra]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("flags", [
    ["--method", "wanda", "--sparsity", 0.6, "--seed", 3, "--ignore", ".*mlp.down_proj"],
    ["--method", "sparsegpt", "--pattern", "2:4", "--percdamp", 0.05, "--blocksize", 16, "--batch-size", 3],
], ids=["wanda-unstructured", "sparsegpt-2:4"])
def test_recipe_reproduces_the_weights_bit_for_bit(flags, tiny_model_dir, text_file, tmp_path, capsys):
    out, new = tmp_path / "out", tmp_path / "new"
    code, _, err = run(small_args(tiny_model_dir, text_file, out, *flags), capsys)
    assert code == 0, err
    code, _, err = run(["prune", "--recipe", out / "recipe.yaml", "--output", new, "--device", "cpu", "--quiet"],
                       capsys)
    assert code == 0, err
    first, again = weights(out), weights(new)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert (new / "recipe.yaml").read_text() == (out / "recipe.yaml").read_text()
    report = json.loads((new / "report.json").read_text())
    assert report["achieved_sparsity"] == pytest.approx(0.6 if "wanda" in flags else 0.5, abs=0.01)


def test_every_method_s_recipe_gives_back_its_config(tmp_path):
    """For each method (its defaults, and options set away from them): the config built from the written recipe
    equals the run's, and the recipe it writes is the same text (a fixed point)."""
    runs = [["--method", name] for name in method_configs()] + [
        ["--method", "sparsegpt", "--pattern", "4:8", "--no-update", "--targets", ".*self_attn.*,.*up_proj"],
        ["--method", "wanda", "--layer-sparsity", "owl", "--owl-lambda", 0.05, "--sparsity", 0.7],
        ["--method", "rotpruner", "--pattern", "structured", "--slicing", 0.2],
    ]
    for i, flags in enumerate(runs):
        args = parse_args(build_parser(), ["prune", "--output", "x", *map(str, flags)])
        config = _method_config(args)
        path = tmp_path / f"{i}.yaml"
        path.write_text(_recipe(args, config))
        again = parse_args(build_parser(), ["prune", "--recipe", str(path), "--output", "y"])
        assert _method_config(again) == config, flags
        assert _recipe(again, config) == path.read_text(), flags


def test_a_flag_on_the_command_line_wins_over_the_recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: sparsegpt\nsparsity: 0.6\nnsamples: 16\nskip-dense-eval: true\n"
                    "ignore: ['.*down_proj', 're:.*q_proj']\neval_data: [pydoc, wikitext2]\n")
    args = parse_args(build_parser(), ["prune", "--recipe", str(path), "--output", "o"])
    assert (args.method, args.sparsity, args.nsamples, args.skip_dense_eval) == ("sparsegpt", 0.6, 16, True)
    assert args.eval_data == "pydoc,wikitext2" and _method_config(args).ignore == (".*down_proj", ".*q_proj")
    args = parse_args(build_parser(), ["prune", "--recipe", str(path), "--output", "o", "--sparsity", "0.3",
                                       "--ignore", ".*o_proj"])
    assert (args.sparsity, args.nsamples) == (0.3, 16)
    assert _method_config(args).ignore == (".*o_proj",)  # a repeatable flag replaces the recipe's list


@pytest.mark.parametrize("flags", [["--pattern", "2:4"], ["--pattern", "mixed-2:4", "--layer-sparsity", "owl"]])
def test_a_pattern_on_the_command_line_replaces_the_recipe_s_sparsity(flags, tmp_path):
    """An unstructured run's recipe (sparsity 0.6) with --pattern N:M on the command line: the pattern decides the
    sparsity, instead of a conflict between a flag the user gave and one the recipe gave."""
    path = tmp_path / "run.yaml"
    path.write_text("method: wanda\nsparsity: 0.6\npattern: unstructured\n")
    config = _method_config(parse_args(build_parser(), ["prune", "--recipe", str(path), "--output", "o", *flags]))
    assert (str(config.pattern), config.sparsity) == (flags[1], 0.5)
    assert _method_config(parse_args(build_parser(), ["prune", "--recipe", str(path), "--output", "o"])).sparsity == 0.6
    with pytest.raises(UsageError, match="drop --sparsity"):  # both on the command line: still a conflict
        _method_config(parse_args(build_parser(), ["prune", "--recipe", str(path), "--output", "o", *flags,
                                                   "--sparsity", "0.6"]))


BAD_RECIPES = [
    ("nsample: 8\n", "unknown key 'nsample': did you mean nsamples?"),
    ("output: runs/x\n", "pass --output on the command line"),
    ("nsamples: many\n", "invalid int value"),
    ("save_format: zip\n", "invalid choice"),
    ("skip_dense_eval: maybe\n", "is a switch"),
    ("- wanda\n", "must be a YAML mapping"),
    ("method: [wanda\n", "not valid YAML"),
    ("method: rotpruner\nignore: .*down_proj\n", "--ignore does not apply to --method rotpruner"),
]


@pytest.mark.parametrize("text,message", BAD_RECIPES)
def test_a_bad_recipe_is_one_line_and_nothing_written(text, message, tiny_model_dir, tmp_path, capsys):
    path, out = tmp_path / "run.yaml", tmp_path / "out"
    path.write_text(text)
    code, _, err = run(["prune", "--model", tiny_model_dir, "--recipe", path, "--output", out], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("method", ["rotpruner", "losa", "slicegpt", "rotpruner-structured", "wanda-channels"])
def test_whole_model_methods_refuse_operator_selection(method, tmp_path, capsys):
    for flag in ("--targets", "--ignore"):
        code, _, err = run(["prune", "--method", method, flag, ".*down_proj", "--output", tmp_path / "o"], capsys)
        assert code == 2 and f"{flag} does not apply to --method {method}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag,regex", [("--ignore", "down_proj"), ("--targets", "model.layers.9.mlp.up_proj"),
                                        ("--ignore", ".*_proj")])
def test_a_regex_that_selects_nothing_is_refused(flag, regex, tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(small_args(tiny_model_dir, text_file, out, flag, regex), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"{flag} {regex!r} matches none" if regex != ".*_proj" else "leave no operator to prune") in err
    assert not out.exists()
    code, _, err = run(small_args(tiny_model_dir, text_file, out, flag, "(unclosed"), capsys)
    assert code == 2 and "is not a regular expression" in err and not out.exists()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ria", "fista"])
def test_ignored_operators_stay_dense_and_the_rest_reach_the_target(method):
    """Layer 0 ignored whole (the loops must still carry its activations), plus layer 1's down_proj; --targets
    then narrows layer 1 to its attention and MLP inputs."""
    dense = tiny_llama()
    model = tiny_llama()
    options = {"iters": 20, "lam_steps": 4, "refit_iters": 5} if method == "fista" else {}
    config = method_configs()[method](sparsity=0.5, ignore=r"re:model\.layers\.0\..*,.*down_proj",
                                      targets=[".*self_attn.*", ".*mlp.*"], **options)
    result = prune(model, config, random_windows(), progress=False)
    adapter = get_adapter(model)
    left = {"model.layers.1.mlp.down_proj"} | {f"model.layers.0.{name}" for group in adapter.groups for name in group}
    assert set(result.report()["ignored_operators"]) == left
    assert {op.name for op in result.operators} == set(adapter.operator_names()) - left
    modules, dense_modules = dict(model.named_modules()), dict(dense.named_modules())
    for name in adapter.operator_names():
        weight = modules[name].weight
        if name in left:
            assert torch.equal(weight, dense_modules[name].weight), name
        else:
            assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6), name


def test_ignore_on_the_command_line_is_in_report_and_recipe(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(small_args(tiny_model_dir, text_file, out, "--ignore", "re:.*layers.1.self_attn.[qk]_proj",
                                       "--save-format", "compact"), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["ignored_operators"] == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]
    assert "2 operators left dense" in stdout
    assert "ignore:\n- .*layers.1.self_attn.[qk]_proj\n" in (out / "recipe.yaml").read_text()


def test_finetune_writes_the_recipe_that_reproduces_it(tiny_model_dir, text_file, tmp_path, capsys):
    out, new = tmp_path / "tuned", tmp_path / "again"
    code, _, err = run(["finetune", "--model", tiny_model_dir, "--train-data", text_file, "--eval-data", "none",
                        "--output", out, "--quiet", "--device", "cpu", "--train-tokens", 64, "--train-seqlen", 32,
                        "--rank", 2, "--lr", 1e-3], capsys)
    assert code == 0, err
    code, _, err = run(["finetune", "--recipe", out / "recipe.yaml", "--output", new, "--quiet", "--device", "cpu"],
                       capsys)
    assert code == 0, err
    first, again = weights(out), weights(new)
    assert all(torch.equal(first[name], again[name]) for name in first)
