"""`prunekit` command line: a thin layer over prunekit.api.

Every user error ends as one line on stderr and exit status 2, with no output directory left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from . import __version__, api
from .data import NAMES
from .errors import UsageError
from .export import save_compact
from .models.adapters import get_adapter
from .models.loading import EMBEDDED_MODELS, load_model, parse_dtype
from .outputs import atomic_output_dir, check_output_dir
from .pruners import CONFIGS, PruneConfig, config_class

DEFAULT_MODEL = "smollm2-135m"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        raise UsageError(message)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded name ({', '.join(EMBEDDED_MODELS)}), local directory or hub id")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def _add_eval_args(p: argparse.ArgumentParser, default_data: str) -> None:
    p.add_argument("--eval-data", default=default_data,
                   help="comma-separated names (pydoc, wikitext2, c4, ptb) or text/JSONL paths; 'none' skips")
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--max-eval-segments", type=int, default=40, help="evaluate at most this many windows")
    p.add_argument("--eval-bos", default="auto", help="auto (per model family), always or never")
    p.add_argument("--eval-batch-size", type=int, default=1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunekit", description="Post-training sparsity for LLMs.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model, evaluate it, save it with report.json")
    _add_model_args(p)
    p.add_argument("--method", default="wanda", help=", ".join(CONFIGS))
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of weights removed (unstructured)")
    p.add_argument("--pattern", default="unstructured", help="unstructured or N:M (2:4, 4:8, ...)")
    p.add_argument("--calib-data", default="pydoc", help="a data name (pydoc, wikitext2, c4, ptb) or a file path")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0)
    _add_eval_args(p, "pydoc")
    p.add_argument("--output", required=True, help="directory to write (must not exist, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--save-format", default="hf", choices=("hf", "compact"),
                   help="hf: Hugging Face weights with zeros in place; compact: packed 2:4/bitmask weights")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--skip-dense-eval", action="store_true", help="evaluate only the pruned model")
    p.add_argument("--checkpoint-dir", help="save progress after every layer here; rerun to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_method_options(p)

    p = sub.add_parser("bench", help="speed and memory of a 2:4 model against its dense self; JSON + PNG")
    _add_model_args(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--output", default="bench.json", help="JSON file to write; the plot goes beside it as .png")

    p = sub.add_parser("eval", help="perplexity of a model; prints JSON")
    _add_model_args(p)
    _add_eval_args(p, "pydoc")
    p.add_argument("--quiet", action="store_true")
    return parser


def method_options() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """{field name: (field, methods that take it)} for every method-specific config field.

    A method declares its CLI options as dataclass fields; `metadata` may give `help` and `flag`
    (default `--field-name`; a bool that defaults to True becomes a `--no-...` switch)."""
    base = {f.name for f in dataclasses.fields(PruneConfig)}
    options: dict = {}
    for method, cls in CONFIGS.items():
        for f in dataclasses.fields(cls):
            if f.init and f.name not in base:
                options.setdefault(f.name, (f, []))[1].append(method)
    return options


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _add_method_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("method options")
    for name, (f, methods) in method_options().items():
        help_text = f"{f.metadata.get('help', '')} ({', '.join(methods)}; default {f.default})"
        if f.type in (bool, "bool"):
            const = not f.default
            group.add_argument(_flag(f), dest=name, action="store_const", const=const, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            group.add_argument(_flag(f), dest=name, type=kind, help=help_text)


def _method_config(args):
    """The method's config dataclass from the CLI flags; a flag the method does not take is an error."""
    cls = config_class(args.method)
    kwargs = {"sparsity": args.sparsity, "pattern": args.pattern}
    for name, (f, methods) in method_options().items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if args.method not in methods:
            raise UsageError(f"{_flag(f)} does not apply to --method {args.method}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if not name.startswith(("cpu", "cuda")):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    return name


def _eval_specs(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [s.strip() for s in text.split(",") if s.strip()]


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _check_data_paths(specs: list[str]) -> None:
    """Fail on a missing local data file before the model is loaded."""
    for spec in specs:
        if spec not in NAMES and not Path(spec).expanduser().is_file():
            raise UsageError(f"data {spec!r} not found: pass an existing text/JSONL file or one of {', '.join(NAMES)}")


def _log(message: str) -> None:
    print(f"prunekit: {message}", file=sys.stderr, flush=True)


def cmd_prune(args) -> int:
    config = _method_config(args)
    _check_positive(nsamples=args.nsamples, seqlen=args.seqlen, eval_seqlen=args.eval_seqlen,
                    max_eval_segments=args.max_eval_segments, batch_size=args.batch_size)
    device, dtype = _device(args.device), parse_dtype(args.dtype)
    eval_specs = _eval_specs(args.eval_data)
    _check_data_paths([args.calib_data, *eval_specs])
    check_output_dir(args.output, args.overwrite)
    progress = not args.quiet
    torch.manual_seed(args.seed)

    with atomic_output_dir(args.output, args.overwrite) as tmp:
        model, tokenizer = load_model(args.model, dtype, device)
        get_adapter(model)  # unsupported architecture → error before any long work
        bos = api.bos_id(model, tokenizer, args.eval_bos)
        calib, calib_text = api.calibration(tokenizer, args.calib_data, args.nsamples, args.seqlen, args.seed, bos)
        _log(f"calibration data: {calib_text.source} ({args.nsamples} windows of {args.seqlen} tokens, seed {args.seed})")
        sets = api.evaluation_sets(tokenizer, eval_specs, args.eval_seqlen, args.max_eval_segments, bos)
        for name, (windows, text) in sets.items():
            _log(f"evaluation data {name}: {text.source} ({windows.shape[0]} windows of {args.eval_seqlen} tokens)")

        ppl, eval_seconds = {}, 0.0
        if sets and not args.skip_dense_eval:
            ppl["dense"], eval_seconds = api.evaluate(model, sets, device, args.eval_batch_size, bos, progress)
        t0 = time.perf_counter()
        result = api.prune(model, config, calib, device=device, batch_size=args.batch_size, progress=progress,
                           checkpoint_dir=args.checkpoint_dir)
        prune_seconds = time.perf_counter() - t0
        if sets:
            ppl["pruned"], seconds = api.evaluate(model, sets, device, args.eval_batch_size, bos, progress)
            eval_seconds += seconds

        report = {
            "prunekit_version": __version__,
            "model": args.model,
            "method": config.method,
            "pattern": str(config.pattern),
            "target_sparsity": config.sparsity,
            "achieved_sparsity": result.achieved_sparsity,
            "config": {**dataclasses.asdict(config), "pattern": str(config.pattern)},
            "calibration": {"data": calib_text.source, "nsamples": args.nsamples, "seqlen": args.seqlen,
                            "seed": args.seed, "bos": bos is not None},
            "evaluation": {"seqlen": args.eval_seqlen, "max_segments": args.max_eval_segments,
                           "bos_mode": args.eval_bos, "bos": bos is not None,
                           "data": {name: text.source for name, (_, text) in sets.items()}},
            "ppl": ppl,
            "timings": {**result.timings, "prune_total": prune_seconds, "eval": eval_seconds},
            "environment": {"device": device, "dtype": str(dtype).removeprefix("torch."),
                            "torch": torch.__version__, "python": platform.python_version()},
            "layers": [dataclasses.asdict(op) for op in result.operators],
        }
        if result.details:
            report["details"] = result.details
        if args.save_format == "compact":
            report["saved"] = {"format": "compact", **save_compact(model, tmp, tokenizer)}
        else:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            report["saved"] = {"format": "hf"}
        (tmp / "report.json").write_text(json.dumps(report, indent=2))

    print(f"{config.method} {config.pattern} (target sparsity {config.sparsity:.4f}) on {args.model}: "
          f"achieved sparsity {result.achieved_sparsity:.4f}, pruning took {prune_seconds:.1f} s")
    if ppl:
        columns = list(ppl)
        print(f"{'perplexity':<14}" + "".join(f"{c:>12}" for c in columns))
        for name in sets:
            print(f"{name:<14}" + "".join(f"{ppl[c][name]:>12.3f}" for c in columns))
    print(f"saved to {args.output} (report: {args.output}/report.json)")
    return 0


def cmd_eval(args) -> int:
    _check_positive(eval_seqlen=args.eval_seqlen, max_eval_segments=args.max_eval_segments)
    device, dtype = _device(args.device), parse_dtype(args.dtype)
    eval_specs = _eval_specs(args.eval_data)
    _check_data_paths(eval_specs)
    model, tokenizer = load_model(args.model, dtype, device)
    bos = api.bos_id(model, tokenizer, args.eval_bos)
    sets = api.evaluation_sets(tokenizer, eval_specs, args.eval_seqlen, args.max_eval_segments, bos)
    ppl, seconds = api.evaluate(model, sets, device, args.eval_batch_size, bos, not args.quiet)
    print(json.dumps({"model": args.model, "ppl": ppl, "eval_seqlen": args.eval_seqlen,
                      "bos": bos is not None, "seconds": seconds}, indent=2))
    return 0


def cmd_bench(args) -> int:
    from .eval.speed import bench, plot

    _check_positive(batch=args.batch, prompt_len=args.prompt_len, gen_len=args.gen_len)
    device = _device(args.device)
    dtype = parse_dtype("float16" if args.dtype == "float32" and device != "cpu" else args.dtype)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: directory {output.parent} does not exist")
    model, _ = load_model(args.model, dtype, device)
    report = bench(model, args.batch, args.prompt_len, args.gen_len, dtype)
    if "note" in report:
        _log(report["note"])
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    plot(report, output.with_suffix(".png"))
    tmp.replace(output)
    print(json.dumps({k: report[k] for k in ("device", "dense", "sparse", "layers_converted") if k in report},
                     indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        args = build_parser().parse_args(argv)
        return {"prune": cmd_prune, "eval": cmd_eval, "bench": cmd_bench}[args.command](args)
    except UsageError as err:
        print(f"prunekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
