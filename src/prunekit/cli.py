"""`prunekit` command line: a thin layer over prunekit.api.

Every user error ends as one line on stderr and exit status 2, with no output directory left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import re
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from . import api, parallel, recipe
from .artifact import check_save_format
from .checkpoints import check_resumable
from .data import NAMES, read_text_file
from .errors import UsageError
from .eval import zeroshot
from .eval.speed import CONVERT, bench, plot
from .eval.plots import comparison_table, draw_comparison, read_reports
from .eval.table import results_table
from .methods import OFFLOADS, check_options, config_class, method_configs
from .models.adapters import get_adapter
from .load import load_model
from .models.loading import EMBEDDED_MODELS, parse_dtype
from .outputs import (atomic_output_dir, check_checkpoint_dir, check_finite_weights, check_output_dir,
                      check_output_file, write_text_atomic, writing)
from .pruners import PruneConfig
from .resources import peak_memory, reset_peak
from .streaming import auto_offload
from .pruners.base import flag_name
from .version import __version__

DEFAULT_MODEL = "smollm2-135m"
WINDOW_DEFAULTS = {"seqlen": 512, "eval_seqlen": 1024}
#: where or how this machine runs a command, not what it computes: left out of recipe.yaml
LOCAL = ("device", "offload", "quiet")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (method options say theirs themselves)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (a switch; off unless given)".lstrip()
        if action.default in (None, ""):
            return text if action.required else f"{text} (default: none)".lstrip()
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        raise UsageError(message)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded name ({', '.join(EMBEDDED_MODELS)}), local directory or hub id")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def _add_recipe_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML file of this command's flags (keys: long flag names without the dashes), "
                                    "e.g. a saved model's recipe.yaml; flags given here override it "
                                    "(prunekit.recipe)")


def _add_eval_args(p: argparse.ArgumentParser, default_data: str | None) -> None:
    p.add_argument("--eval-data", default=default_data,
                   help="perplexity sets: comma-separated names (pydoc, wikitext2, c4, ptb) or text/JSONL paths; "
                        "'none' skips")
    p.add_argument("--eval-seqlen", type=int,
                   help=f"tokens per evaluation window (default: {WINDOW_DEFAULTS['eval_seqlen']}, or the model's "
                        "context if shorter)")
    p.add_argument("--max-eval-segments", type=int, default=40, help="evaluate at most this many windows")
    p.add_argument("--eval-bos", default="auto",
                   help="BOS at the start of every window and zero-shot prompt: auto (per model family), always "
                        "or never")
    p.add_argument("--eval-batch-size", type=int, default=1, help="evaluation windows per forward pass")
    p.add_argument("--task-data", help="folder of local zero-shot JSONL files (e.g. ../shared/data/zeroshot); "
                                       "without it lm-eval's standard tasks load their data from the hub")
    p.add_argument("--limit", type=int, help="zero-shot: score only the first N documents of each task")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunekit", description="Post-training sparsity for LLMs.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model, evaluate it, save it with report.json and recipe.yaml")
    _add_recipe_arg(p)
    _add_model_args(p)
    p.add_argument("--method", default="wanda", help=", ".join(method_configs()))
    p.add_argument("--sparsity", type=float,
                   help="fraction of weights removed (default: 0.5 unstructured; an N:M pattern implies 1 - N/M)")
    p.add_argument("--pattern", default="unstructured",
                   help="unstructured, N:M (2:4, 4:8, ...), mixed-N:M (mixed-2:4, mixed-2:8: each layer its own N, "
                        "with --layer-sparsity owl/rmi/sensitivity or --method losa) or structured (with --method "
                        "rotpruner or slicegpt)")
    p.add_argument("--calib-data", default="pydoc", help="a data name (pydoc, wikitext2, c4, ptb) or a file path")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int,
                   help=f"tokens per calibration window (default: {WINDOW_DEFAULTS['seqlen']}, or the model's "
                        "context if shorter)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows' random starts")
    _add_eval_args(p, "pydoc")
    p.add_argument("--eval-tasks", default="",
                   help=f"zero-shot tasks ({', '.join(zeroshot.task_names())}) and more perplexity sets, "
                        "comma-separated: evaluated on the dense and the pruned model")
    p.add_argument("--output", required=True,
                   help="directory to write (must not exist, unless --overwrite; missing parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--save-format", default="hf", choices=("hf", "compact"),
                   help="hf: Hugging Face weights with zeros in place; compact: packed 2:4/bitmask weights")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--skip-dense-eval", action="store_true", help="evaluate only the pruned model")
    p.add_argument("--checkpoint-dir", help="save progress after every layer here; rerun to resume")
    p.add_argument("--offload", default="auto", choices=("auto", *OFFLOADS),
                   help="where the layers not being pruned wait: none (on the device), cpu, or disk (read from "
                        "the model's safetensors one layer at a time, for models larger than host memory); "
                        "auto picks from the model's size and the free memory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_method_options(p)

    p = sub.add_parser("bench", help="speed and memory of a 2:4 model against its dense self; JSON + PNG")
    _add_model_args(p)
    p.add_argument("--batch", type=int, default=1, help="sequences per forward pass")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens (prefill)")
    p.add_argument("--gen-len", type=int, default=32, help="generated tokens (decode)")
    p.add_argument("--convert", choices=CONVERT, default="all",
                   help="all: every 2:4 linear runs on the 2:4 kernels; faster: only the shapes whose 2:4 kernels "
                        "timed faster than dense at every measured row count")
    p.add_argument("--fp8", action="store_true",
                   help="also measure the same weights in FP8 (E4M3, per-channel scales, FP8 activations): dense "
                        "(torch._scaled_mm) and 2:4 (cuSPARSELt FP8, or the Triton FP8 kernel for <= 16 rows where "
                        "it timed faster)")
    p.add_argument("--compile", action="store_true",
                   help="run every variant through torch.compile (norms, rotary, residual adds fused; the 2:4 and FP8 "
                        "layers eager behind one custom op): the first run of each variant compiles for minutes")
    p.add_argument("--output", default="bench.json", help="JSON file to write; the plot goes beside it as .png")

    p = sub.add_parser("finetune", help="fine-tune a pruned model with mask-aligned LoRA (LoSA), merge, save")
    _add_recipe_arg(p)
    _add_model_args(p)
    _add_eval_args(p, "pydoc")
    p.add_argument("--output", required=True,
                   help="directory to write (must not exist, unless --overwrite; missing parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_fields(p, method_configs()["losa"], FINETUNE_FIELDS)

    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model; prints a table")
    _add_model_args(p)
    p.add_argument("--tasks", default="",
                   help="comma-separated: perplexity sets (pydoc, wikitext2, c4, ptb, or a text/JSONL path) and "
                        f"zero-shot tasks ({', '.join(zeroshot.task_names())})")
    _add_eval_args(p, None)
    p.add_argument("--batch-size", type=int, help="windows / lm-eval requests per forward pass (--eval-batch-size)")
    p.add_argument("--output", help="write the results as JSON to this file")
    p.add_argument("--json", action="store_true",
                   help="print the JSON results instead of the table (always JSON without --tasks)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="compare pruning runs: a table of their results and one figure per layer")
    p.add_argument("runs", nargs="+", help="folders written by prunekit prune (each holds report.json)")
    p.add_argument("--output", default="report.png", help="PNG file for the figure (default report.png)")

    p = sub.add_parser("task-configs", help="write prunekit's zero-shot task configs for the lm_eval command")
    p.add_argument("--task-data", required=True, help="folder of the local zero-shot JSONL files")
    p.add_argument("--output", required=True, help="folder to write the YAML files to (lm_eval --include_path)")
    p.add_argument("--tasks", default=",".join(zeroshot.task_names()), help="comma-separated zero-shot tasks")
    return parser


def method_options() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """{field name: (field, methods that take it)} for every method-specific config field.

    A method declares its CLI options as dataclass fields; `metadata` may give `help` and `flag`
    (default `--field-name`; a bool that defaults to True becomes a `--no-...` switch)."""
    base = {f.name for f in dataclasses.fields(PruneConfig)}
    options: dict = {}
    for method, cls in method_configs().items():
        for f in dataclasses.fields(cls):
            if f.init and f.name not in base:
                options.setdefault(f.name, (f, []))[1].append(method)
    return options




def _option_help(f: dataclasses.Field, methods: list[str]) -> str:
    """The field's help, the methods that take it and its default for each (a `--no-x` switch turns off
    `x`, which is on by default)."""
    text = f.metadata.get("help", "")
    if f.metadata.get("repeat"):
        return f"{text} ({', '.join(methods)})"
    if f.type in (bool, "bool"):
        state = f"turns off {f.name}, which is on by default" if f.default else "off unless given"
        return f"{text} ({', '.join(methods)}; {state})"
    defaults = {method: _field_default(method_configs()[method], f.name) for method in methods}
    if len(set(map(repr, defaults.values()))) == 1:
        return f"{text} ({', '.join(methods)}; default {f.default})"
    return f"{text} (default: {', '.join(f'{m} {d}' for m, d in defaults.items())})"


def _field_default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("method options")
    for name, (f, methods) in method_options().items():
        help_text = _option_help(f, methods)
        if f.type in (bool, "bool"):
            const = not f.default
            group.add_argument(flag_name(f), dest=name, action="store_const", const=const, help=help_text)
        elif f.metadata.get("repeat"):  # --ignore A --ignore B: the config takes the list
            group.add_argument(flag_name(f), dest=name, action="append", metavar="REGEX", help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            group.add_argument(flag_name(f), dest=name, type=kind, help=help_text)


FINETUNE_FIELDS = ("rank", "alpha", "adapter", "train_data", "train_tokens", "train_seqlen", "train_batch_size",
                   "lr", "train_seed")


def _add_config_fields(p: argparse.ArgumentParser, cls, names) -> None:
    """Options for some fields of one config dataclass (`prunekit finetune` takes LoSA's training fields)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        p.add_argument(flag_name(f), dest=name, type=kind, help=f"{f.metadata.get('help', '')} (default {f.default})")


#: --pattern structured: the method that removes whole dimensions for each method that has one
STRUCTURED = {"rotpruner": "rotpruner-structured", "rotpruner-structured": "rotpruner-structured",
              "slicegpt": "slicegpt"}


def _method_config(args):
    """The method's config dataclass from the CLI flags; a flag the method does not take is an error.
    `--method rotpruner --pattern structured` (the RotPruner paper's spelling) is rotpruner-structured."""
    if args.pattern == "structured":
        if args.method not in STRUCTURED:
            raise UsageError(f"--pattern structured is not a pattern of --method {args.method}: use --method "
                             f"rotpruner or slicegpt with --slicing (or --method wanda-channels for MLP channels)")
        args.method, args.pattern = STRUCTURED[args.method], "unstructured"
    cls = config_class(args.method)
    kwargs = {"sparsity": args.sparsity, "pattern": args.pattern}
    for name, (f, methods) in method_options().items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if args.method not in methods:
            raise UsageError(f"{flag_name(f)} does not apply to --method {args.method}: it is an option of "
                             f"{', '.join(methods)} (drop it, or choose one of these methods)")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def _eval_specs(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [s.strip() for s in text.split(",") if s.strip()]


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _fit_windows(args, model) -> None:
    """Resolve --seqlen/--eval-seqlen against the model's context (max_position_embeddings): a length the
    user gave that exceeds it is refused (some families index past their position table, others silently
    extrapolate); a default is shortened to it."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for name, default in WINDOW_DEFAULTS.items():
        if not hasattr(args, name):
            continue
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if value is None:
            value = min(default, context) if context else default
            if value < default:
                _log(f"{flag} {value}: the model's context is {context} tokens")
        elif context and value > context:
            raise UsageError(f"{flag} {value} is longer than the model's context ({context} positions): "
                             f"use {flag} {context} or less")
        setattr(args, name, value)


def _check_data_paths(specs: list[str]) -> None:
    """Fail on a missing or unreadable local data file (not UTF-8, bad JSON) before the model is loaded."""
    for spec in specs:
        if spec in NAMES:
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            raise UsageError(f"data {spec!r} is a folder, not a file: pass a text/JSONL file in it, or one of "
                             f"{', '.join(NAMES)}")
        if not path.is_file():
            raise UsageError(f"data {spec!r} not found: pass an existing text/JSONL file or one of {', '.join(NAMES)}")
        read_text_file(Path(spec).expanduser())


def _log(message: str) -> None:
    print(f"prunekit: {message}", file=sys.stderr, flush=True)


def cmd_prune(args) -> int:
    config = _method_config(args)
    found = check_options(config, args.checkpoint_dir, "cpu" if args.offload == "auto" else args.offload)
    _check_positive(nsamples=args.nsamples, seqlen=args.seqlen, eval_seqlen=args.eval_seqlen,
                    max_eval_segments=args.max_eval_segments, batch_size=args.batch_size,
                    eval_batch_size=args.eval_batch_size, limit=args.limit)
    device, dtype = _device(args.device), parse_dtype(args.dtype)
    extra_specs, task_names = api.split_tasks(_eval_specs(args.eval_tasks))
    offload, why = _offload(args, found, device, dtype)
    api.check_streamed_tasks(offload == "disk", task_names)
    eval_specs = _eval_specs(args.eval_data) + extra_specs
    _check_data_paths([args.calib_data, *eval_specs])
    check_save_format(config, args.save_format, streamed=offload == "disk")
    check_output_dir(args.output, args.overwrite)
    if args.checkpoint_dir:
        check_checkpoint_dir(args.checkpoint_dir)
    if why:  # after every check: a refused run prints one line
        _log(f"--offload auto: {offload} ({why})")
    if getattr(config, "parallel_layers", False):
        device = parallel.init(device)  # under torchrun: join the process group, take this rank's GPU
        if parallel.rank() > 0:
            return _prune_share(args, config, device, dtype)
    tasks = _load_tasks(task_names, args)
    progress = not args.quiet
    torch.manual_seed(args.seed)

    with atomic_output_dir(args.output, args.overwrite) as tmp:
        # loaded where its layers wait (the device only with --offload none); evaluation moves it as it needs
        model, tokenizer = load_model(args.model, dtype, device if offload == "none" else "cpu", offload=offload,
                                      workdir=tmp / ".layers")
        _fit_windows(args, model)
        api.check_compatible(model, config)  # architecture, --targets/--ignore, N:M widths: before any long work
        bos = api.bos_id(model, tokenizer, args.eval_bos)
        calib, calib_text = api.calibration(tokenizer, args.calib_data, args.nsamples, args.seqlen, args.seed, bos)
        _log(f"calibration data: {calib_text.source} ({args.nsamples} windows of {args.seqlen} tokens, seed {args.seed})")
        if args.checkpoint_dir:  # another run's progress or a damaged file: refused before the evaluation
            check_resumable(args.checkpoint_dir, config, calib, model)
        sets = api.evaluation_sets(tokenizer, eval_specs, args.eval_seqlen, args.max_eval_segments, bos)
        for name, (windows, text) in sets.items():
            _log(f"evaluation data {name}: {text.source} ({windows.shape[0]} windows of {args.eval_seqlen} tokens)")

        evaluations = {}
        suite = dict(device=device, batch_size=args.eval_batch_size, bos=bos, limit=args.limit, progress=progress)
        if (sets or tasks) and not args.skip_dense_eval:
            evaluations["dense"] = api.evaluate_suite(model, tokenizer, sets, tasks, **suite)
        reset_peak(device)
        result = api.prune(model, config, calib, device=device, batch_size=args.batch_size, progress=progress,
                           checkpoint_dir=args.checkpoint_dir, tokenizer=tokenizer, offload=offload)
        pruning_memory = peak_memory(device)
        if sets or tasks:
            evaluations["pruned"] = api.evaluate_suite(model, tokenizer, sets, tasks, **suite)
        eval_seconds = sum(sum(e["seconds"].values()) for e in evaluations.values())
        table = results_table(evaluations) if evaluations else ""
        run_recipe = _recipe(args, config)
        report = result.write(tmp, args.save_format, hint=_resume_hint(args), recipe=run_recipe, report_extra={
            "model": args.model,
            "calibration": {"data": calib_text.source, "seed": args.seed, "bos": bos is not None},
            "evaluation": _evaluation_settings(args, sets, tasks, bos),
            "ppl": {column: e["ppl"] for column, e in evaluations.items() if e["ppl"]},
            "zero_shot": {column: e["zero_shot"] for column, e in evaluations.items() if e["zero_shot"]},
            "zero_shot_mean": {column: e["zero_shot_mean"] for column, e in evaluations.items()
                               if e["zero_shot_mean"]},
            "table": table,
            "timings": {"eval": eval_seconds},
            "offload": offload,
            "peak_memory": {"pruning": pruning_memory, "run": peak_memory(device)},
            "environment": _environment(device, dtype),
        })

    structure, parameters = result.structure, result.parameters
    if structure:
        print(f"{config.method} structured ({structure['removes']} {structure['target']:.4f}) on {args.model}: "
              f"parameters {parameters['before'] / 1e6:.2f} M -> {parameters['after'] / 1e6:.2f} M "
              f"({structure['parameters_removed']:.2%} removed), pruning took {result.seconds:.1f} s")
    else:
        dense = report.get("ignored_operators")
        print(f"{config.method} {config.pattern} (target sparsity {config.sparsity:.4f}) on {args.model}: "
              f"achieved sparsity {result.achieved_sparsity:.4f}"
              f"{f' ({len(dense)} operators left dense by --targets/--ignore)' if dense else ''}, "
              f"pruning took {result.seconds:.1f} s")
    if table:
        print(table)
    print(f"saved to {args.output} (report: {args.output}/report.json, recipe: {args.output}/recipe.yaml)")
    return 0


def _recipe(args, config) -> str:
    """recipe.yaml of a run: every flag of its command as it took effect (the method's options as its config
    holds them, window lengths as fitted to the model), but not where it wrote (prunekit.recipe.WHERE) or how this
    machine ran it (LOCAL)."""
    sub = recipe.subparser(build_parser(), args.command)
    values = {a.dest: getattr(args, a.dest) for a in sub._actions if hasattr(args, a.dest) and a.dest not in LOCAL}
    if args.command == "prune":  # the method's options from its config; other methods' are not flags of this run
        for name, (_, methods) in method_options().items():
            values.pop(name, None)
            if config.method in methods:
                values[name] = getattr(config, name)
        values.update(method=config.method, pattern=config.pattern,  # an N:M pattern implies its sparsity
                      sparsity=None if config.removes or config.pattern.is_nm else config.sparsity)
    else:
        values.update({name: getattr(config, name) for name in FINETUNE_FIELDS})
    return recipe.dump(sub, values)


def _offload(args, method, device: str, dtype) -> tuple[str, str]:
    """(--offload as given, "") or for `auto` the choice streaming.auto_offload makes from the model's size and
    the free host and GPU memory, with its reason when it is not cpu (the choice worth a note)."""
    if args.offload != "auto":
        return args.offload, ""
    path = Path(args.model).expanduser()
    if len(method.offload) == 1 or not path.is_dir():  # a whole-model method; an embedded name, .gguf or hub id
        return method.offload[0] if len(method.offload) == 1 else "cpu", ""
    choice, why = auto_offload(str(path), method.offload, device, args.nsamples,
                               args.seqlen or WINDOW_DEFAULTS["seqlen"], dtype)
    return choice, why if choice != "cpu" else ""


def _prune_share(args, config, device, dtype) -> int:
    """A torchrun rank other than 0 under --parallel-layers: prune its share of the layers and hand
    them over (prunekit.parallel); rank 0 evaluates and saves."""
    torch.manual_seed(args.seed)
    offload = "none" if args.offload == "none" else "cpu"  # disk is refused with --parallel-layers
    model, tokenizer = load_model(args.model, dtype, device if offload == "none" else "cpu")
    _fit_windows(args, model)
    bos = api.bos_id(model, tokenizer, args.eval_bos)
    calib, _ = api.calibration(tokenizer, args.calib_data, args.nsamples, args.seqlen, args.seed, bos)
    api.prune(model, config, calib, device=device, batch_size=args.batch_size, progress=False, offload=offload)
    return 0


def _decoder_sparsity(model) -> float:
    adapter = get_adapter(model)
    ops = [op for layer in adapter.layers() for _, op in adapter.linears(layer)]
    weights = [op.base.weight if hasattr(op, "base") else op.weight for op in ops]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def cmd_finetune(args) -> int:
    cls = method_configs()["losa"]
    options = {name: getattr(args, name) for name in FINETUNE_FIELDS if getattr(args, name) is not None}
    try:
        config = cls(sparsity=0.0, stages=1, rmi=False, rank_allocation=False, **options)
    except ValueError as err:
        raise UsageError(str(err)) from err
    _check_positive(eval_seqlen=args.eval_seqlen, max_eval_segments=args.max_eval_segments)
    device, dtype = _device(args.device), parse_dtype(args.dtype)
    eval_specs = _eval_specs(args.eval_data)
    _check_data_paths(eval_specs)
    check_output_dir(args.output, args.overwrite)
    progress = not args.quiet

    with atomic_output_dir(args.output, args.overwrite) as tmp:
        model, tokenizer = load_model(args.model, dtype, device)
        _fit_windows(args, model)
        get_adapter(model)
        bos = api.bos_id(model, tokenizer, args.eval_bos)
        sets = api.evaluation_sets(tokenizer, eval_specs, args.eval_seqlen, args.max_eval_segments, bos)
        ppl, eval_seconds = {}, 0.0
        if sets:
            ppl["before"], eval_seconds = api.evaluate(model, sets, device, args.eval_batch_size, bos, progress)
        sparsity_before = _decoder_sparsity(model)
        t0 = time.perf_counter()
        result = api.finetune(model, config, tokenizer, device=device, progress=progress)
        seconds = time.perf_counter() - t0
        sparsity_after = _decoder_sparsity(model)
        if sets:
            ppl["after"], more = api.evaluate(model, sets, device, args.eval_batch_size, bos, progress)
            eval_seconds += more
        report = {
            "prunekit_version": __version__, "model": args.model, "adapter": config.adapter,
            "config": {name: getattr(config, name) for name in FINETUNE_FIELDS},
            "sparsity_before": sparsity_before, "sparsity_after": sparsity_after, "ppl": ppl,
            "timings": {"finetune": seconds, "eval": eval_seconds}, "details": result.details,
            "environment": _environment(device, dtype),
        }
        check_finite_weights(model)
        with writing(args.output):
            if extra := result.before_save(model, tmp):
                report["saved_extra"] = extra
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "report.json").write_text(json.dumps(report, indent=2))
            (tmp / "recipe.yaml").write_text(_recipe(args, config))

    print(f"fine-tuned {args.model} ({config.adapter} LoRA, rank {config.rank}, {result.details['train']['tokens']} "
          f"tokens in {seconds:.1f} s): decoder sparsity {sparsity_before:.4f} -> {sparsity_after:.4f}")
    for name in sets:
        print(f"perplexity {name}: {ppl['before'][name]:.3f} -> {ppl['after'][name]:.3f}")
    print(f"saved to {args.output} (report: {args.output}/report.json)")
    return 0


def cmd_eval(args) -> int:
    _check_positive(eval_seqlen=args.eval_seqlen, max_eval_segments=args.max_eval_segments,
                    batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, limit=args.limit)
    device, dtype = _device(args.device), parse_dtype(args.dtype)
    eval_specs, task_names = api.split_tasks(_eval_specs(args.tasks))
    if args.eval_data is not None:
        eval_specs = _eval_specs(args.eval_data) + eval_specs
    elif not args.tasks:
        eval_specs = ["pydoc"]  # no --tasks, no --eval-data: the offline default
    _check_data_paths(eval_specs)
    if args.output:
        check_output_file(args.output)
    tasks = _load_tasks(task_names, args)
    model, tokenizer = load_model(args.model, dtype, device)
    _fit_windows(args, model)
    bos = api.bos_id(model, tokenizer, args.eval_bos)
    sets = api.evaluation_sets(tokenizer, eval_specs, args.eval_seqlen, args.max_eval_segments, bos)
    batch_size = args.batch_size or args.eval_batch_size
    results = api.evaluate_suite(model, tokenizer, sets, tasks, device=device, batch_size=batch_size, bos=bos,
                                 limit=args.limit, progress=not args.quiet)
    report = {"prunekit_version": __version__, "model": args.model, **results,
              "evaluation": _evaluation_settings(args, sets, tasks, bos),
              "environment": _environment(device, dtype), "table": results_table({args.model: results})}
    text = json.dumps(report, indent=2)
    if args.output:
        write_text_atomic(args.output, text)
    # perplexity only (`--eval-data`): a JSON object with "ppl", which scripts read; with --tasks: the table
    print(text if args.json or not args.tasks else report["table"])
    return 0


def cmd_bench(args) -> int:
    _check_positive(batch=args.batch, prompt_len=args.prompt_len, gen_len=args.gen_len)
    device = _device(args.device)
    dtype = parse_dtype("float16" if args.dtype == "float32" and device != "cpu" else args.dtype)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: directory {output.parent} does not exist")
    model, _ = load_model(args.model, dtype, device)
    report = bench(model, args.batch, args.prompt_len, args.gen_len, dtype, convert=args.convert, fp8=args.fp8,
                   compile=args.compile)
    if "note" in report:
        _log(report["note"])
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    plot(report, output.with_suffix(".png"))
    tmp.replace(output)
    _log(f"kernel paths: {report.get('kernel_path_counts', {})} (per layer under \"kernel_paths\" in {output}; "
         "PRUNEKIT_LOG=1 prints each decision and its reason)")
    keys = ("device", "dense", "sparse", "dense_fp8", "sparse_fp8", "layers_converted", "kernel_path_counts",
            "kernel_path_counts_dense_fp8", "kernel_path_counts_fp8")
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2))
    return 0


def cmd_report(args) -> int:
    reports = read_reports(args.runs)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: folder {output.parent} does not exist")
    print(comparison_table(reports))
    draw_comparison(reports, output)
    print(f"figure: {output}")
    return 0


def cmd_task_configs(args) -> int:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    zeroshot.check_tasks(names, args.task_data)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} exists and is not a folder")
    written = zeroshot.write_task_configs(args.task_data, out, names)
    print(f"wrote {len(written)} task configs to {out}; use them with: "
          f"lm_eval --include_path {out} --tasks {','.join(names)} ...")
    return 0


def _load_tasks(names: list[str], args) -> dict:
    """lm-eval Tasks for the zero-shot names (data loaded), or {}; fails before the model is loaded."""
    if not names:
        return {}
    if args.task_data is not None and not Path(args.task_data).is_dir():
        raise UsageError(f"--task-data {args.task_data} is not a folder")
    return zeroshot.load_tasks(names, args.task_data, progress=not args.quiet)


def _evaluation_settings(args, sets: dict, tasks: dict, bos: int | None) -> dict:
    """What a reader needs to reproduce or compare the numbers: protocol, data, BOS, lm-eval version."""
    settings = {"seqlen": args.eval_seqlen, "max_segments": args.max_eval_segments,
                "bos_mode": args.eval_bos, "bos": bos is not None,
                "data": {name: text.source for name, (_, text) in sets.items()}}
    if tasks:
        settings["zero_shot"] = {"tasks": list(tasks), "limit": args.limit, "num_fewshot": 0,
                                 "task_data": str(Path(args.task_data).resolve()) if args.task_data else "hub",
                                 "add_bos_token": bos is not None, "lm_eval": zeroshot.lm_eval_version()}
    return settings


def _environment(device: str, dtype) -> dict:
    return {"device": device, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args = None
    try:
        with _sigterm_as_interrupt():
            args = recipe.parse_args(build_parser(), argv)
            return {"prune": cmd_prune, "eval": cmd_eval, "bench": cmd_bench, "report": cmd_report,
                    "task-configs": cmd_task_configs, "finetune": cmd_finetune}[args.command](args)
    except UsageError as err:
        print(f"prunekit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: temporary outputs and the output's lock are already removed
        print(f"prunekit: interrupted, nothing saved{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args) -> str:
    checkpoints = getattr(args, "checkpoint_dir", None)
    return f"; rerun the same command to resume from {checkpoints}" if checkpoints else ""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, so that every `finally` (temporary folders, locks) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
