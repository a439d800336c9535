"""load_model: every model prunekit reads — an embedded name, a local Hugging Face directory or .gguf file, a hub
id (prunekit.models.loading finds it), and prunekit's own compact and sliced outputs (prunekit.export)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UsageError
from .export import is_compact, is_sliced_dir, load_compact, load_sliced_dir
from .models.loading import EMBEDDED_MODELS, parse_dtype, resolve_model
from .rotation.residual import is_residual_dir
from .streaming import load_streamed


def load_model(spec: str = "smollm2-135m", dtype: str | torch.dtype = "float32", device: str = "cpu",
               offload: str = "cpu", workdir=None):
    """(model, tokenizer) for an embedded name, a local directory or .gguf file, or a hub id; model in eval mode.
    A damaged or incomplete local model (truncated file, corrupt header, missing tokenizer) is a UsageError.

    `offload="disk"`: only the model's skeleton is loaded, its decoder layers stay in the safetensors files and
    are read one at a time when a layer walk reaches them (prunekit.streaming); pruned layers are written to
    `workdir` until the model is saved."""
    torch_dtype = parse_dtype(dtype)
    try:
        source = resolve_model(spec)
        if offload == "disk":
            return _load_streamed(source, torch_dtype, workdir)
        model, tokenizer = _load_source(source, torch_dtype)
    except UsageError:
        raise
    except Exception as err:  # whatever a damaged file makes safetensors, gguf or transformers raise
        raise UsageError(f"could not load model {spec!r}: {_one_line(err)} ({_load_hint(spec)})") from err
    model.eval()
    return model.to(device), tokenizer


def _load_streamed(source: str, dtype: torch.dtype, workdir):
    from transformers import AutoTokenizer

    if is_residual_dir(source):
        raise UsageError(f"{source} has residual rotations (RotPruner), which --offload disk does not stream: use "
                         "--offload cpu")
    if not Path(source).is_dir() or is_sliced_dir(source) or is_compact(source):
        raise UsageError(f"--offload disk streams a local Hugging Face safetensors directory, not {source}: save "
                         "the model with save_pretrained first, or use --offload cpu")
    _check_tokenizer_files(source)
    return load_streamed(source, dtype, workdir), AutoTokenizer.from_pretrained(source)


def _load_source(source: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_tokenizer_files(source)
    if is_sliced_dir(source):  # SliceGPT / RotPruner-structured: shapes differ from the config's
        return load_sliced_dir(source, dtype), AutoTokenizer.from_pretrained(source)
    if is_compact(source):  # prunekit's compact format: packed sparse weights, restored bit for bit
        return load_compact(source).to(dtype), AutoTokenizer.from_pretrained(source)
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype), AutoTokenizer.from_pretrained(source)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def _check_tokenizer_files(source: str) -> None:
    path = Path(source)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"model directory {source} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}): save it "
                         f"there with tokenizer.save_pretrained({str(source)!r})")


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(err).__name__}: {text}"


def _load_hint(spec: str) -> str:
    if Path(spec).expanduser().exists():
        return "the files look damaged or incomplete: save or download the model again"
    return f"pass a local model directory or an embedded name: {', '.join(EMBEDDED_MODELS)}"
