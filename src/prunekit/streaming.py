"""Models larger than host memory (`--offload disk`): every decoder layer waits in its safetensors shard on
disk; the layer walker reads a layer when its turn comes and writes it out, pruned, before reading the next.

`load_streamed(folder, dtype)` builds the model's skeleton: embeddings, final norm, head and buffers in memory,
the decoder layers' parameters on the meta device (no storage). Its `LayerStore` (`layer_store(model)`) knows
where each layer's tensors are: `load(i)` fills layer i from them, `release(i)` writes it to its own shard and
empties it again, `drop(i)` empties it unchanged (an evaluation pass). `save(folder)` moves the written shards
there and adds the rest of the model and the index: a normal sharded Hugging Face directory, one shard per
decoder layer and one for everything else.

Host memory at any time: the skeleton, one decoder layer and the walker's activations.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UsageError
from .models.adapters import get_adapter

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def layer_store(model: nn.Module) -> "LayerStore | None":
    """The LayerStore of a streamed model, None for a model held in memory."""
    return getattr(model, "_prunekit_layer_store", None)


def weight_map(folder: Path) -> dict[str, str]:
    """{tensor name: shard file} of a safetensors model directory (sharded with an index, or one file)."""
    from safetensors import safe_open

    if (folder / INDEX).is_file():
        return json.loads((folder / INDEX).read_text())["weight_map"]
    if (folder / SINGLE).is_file():
        with safe_open(folder / SINGLE, "pt") as f:
            return dict.fromkeys(f.keys(), SINGLE)
    raise UsageError(f"--offload disk reads a safetensors model directory, and {folder} has neither {INDEX} nor "
                     f"{SINGLE}: save the model with save_pretrained, or use --offload cpu")


@contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device and their buffers as usual (rotary
    frequencies are computed at construction, not stored in the checkpoint)."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def load_streamed(folder: str | Path, dtype: torch.dtype, workdir: str | Path | None = None) -> nn.Module:
    """The skeleton of the model in `folder` with its LayerStore attached; pruned layers go to `workdir`
    (default: a new temporary folder) until `save`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    shards = weight_map(folder)
    config = AutoConfig.from_pretrained(folder)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    store = LayerStore(model, folder, shards, dtype, workdir)
    model._prunekit_layer_store = store
    store.load_rest()
    return model.eval()


class LayerStore:
    """Where each decoder layer of a streamed model lives: its source shards until it is released, then its
    own written shard."""

    def __init__(self, model: nn.Module, source: Path, shards: dict[str, str], dtype: torch.dtype, workdir):
        self.model, self.source, self.shards, self.dtype = model, source, shards, dtype
        self.adapter = get_adapter(model)
        self.n_layers = len(self.adapter.layers())
        self.work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prunekit-layers-"))
        self.written: dict[int, Path] = {}  # layer -> the shard holding its released (pruned) weights
        self.contents: dict[int, dict[str, int]] = {}  # layer -> {tensor name: bytes} of that shard
        self.loaded: set[int] = set()
        self.peak_loaded = 0  # most layers in memory at once (tests bound it)

    def prefix(self, i: int) -> str:
        return f"{self.adapter.layer_prefix(i)}."

    def shard_name(self, i: int) -> str:
        """Layer i's shard; index n_layers is the shard of everything outside the decoder layers."""
        return f"model-{i + 1:05d}-of-{self.n_layers + 1:05d}.safetensors"

    def identity(self) -> str:
        """Names and sizes of the source files: part of a checkpoint's fingerprint (the layers are not sampled)."""
        files = sorted(set(self.shards.values()))
        return ";".join(f"{name}:{(self.source / name).stat().st_size}" for name in files)

    def _read(self, files_and_keys: dict[Path, list[str]]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        tensors = {}
        for path, keys in files_and_keys.items():
            with safe_open(path, "pt") as f:
                for key in keys:
                    tensors[key] = f.get_tensor(key).to(self.dtype)
        return tensors

    def _is_layer_key(self, key: str) -> bool:
        return key.startswith(f"{self.adapter.layers_path}.")

    def load_rest(self) -> None:
        """Everything outside the decoder layers, from the source shards; a tied head shares the embedding."""
        keys = defaultdict(list)
        for key, file in self.shards.items():
            if not self._is_layer_key(key):
                keys[self.source / file].append(key)
        self.model.load_state_dict(self._read(keys), strict=False, assign=True)
        if getattr(self.model.config.get_text_config(), "tie_word_embeddings", False):
            self.model.get_output_embeddings().weight = self.model.get_input_embeddings().weight
        missing = [name for name, p in self.model.named_parameters() if p.is_meta and not self._is_layer_key(name)]
        if missing:
            raise UsageError(f"{self.source} lacks {missing[0]} (names its weights differently from the model): "
                             "use --offload cpu")

    def load(self, i: int) -> nn.Module:
        """Layer i with its weights in memory (its pruned shard once released, else the source shards)."""
        layer, prefix = self.adapter.layers()[i], self.prefix(i)
        if i in self.written:
            from safetensors.torch import load_file
            tensors = load_file(self.written[i])
        else:
            keys = defaultdict(list)
            for key, file in self.shards.items():
                if key.startswith(prefix):
                    keys[self.source / file].append(key)
            tensors = self._read(keys)
        try:
            layer.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()}, strict=True, assign=True)
        except RuntimeError as err:
            raise UsageError(f"decoder layer {i}'s weights in {self.source} do not match the model "
                             f"({str(err).splitlines()[0]}): use --offload cpu") from err
        self.loaded.add(i)
        self.peak_loaded = max(self.peak_loaded, len(self.loaded))
        return layer

    def release(self, i: int) -> None:
        """Write layer i (on the CPU) to its shard in the work folder, then empty it. NaN/Inf is refused here,
        before the layer is written."""
        from safetensors.torch import save_file

        layer, prefix = self.adapter.layers()[i], self.prefix(i)
        tensors = {prefix + k: v.detach().contiguous() for k, v in layer.state_dict().items()}
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise UsageError(f"the result has NaN/Inf values in {bad[0]}: nothing saved; check the method's options")
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / self.shard_name(i)
        tmp = path.with_name(f".{path.name}.partial")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
        self.written[i] = path
        self.contents[i] = {k: t.numel() * t.element_size() for k, t in tensors.items()}
        self.drop(i)

    def drop(self, i: int) -> None:
        """Empty layer i: its parameters back on the meta device."""
        self.adapter.layers()[i].to("meta")
        self.loaded.discard(i)

    def save(self, folder: str | Path) -> dict:
        """Move every released layer's shard into `folder` and write the rest, the index and config.json there.
        Layers never released (a method that skipped them) are copied from the source unchanged."""
        from safetensors.torch import save_file

        folder = Path(folder)
        for i in range(self.n_layers):
            if i not in self.written:
                self.load(i)
                self.release(i)
        weight_map, total = {}, 0
        for i in range(self.n_layers):
            target = folder / self.shard_name(i)
            if self.written[i] != target:  # moved out of the work folder; copied from an earlier save
                (shutil.move if self.written[i].parent == self.work else shutil.copy2)(self.written[i], target)
                self.written[i] = target
            for key, size in self.contents[i].items():
                weight_map[key] = target.name
                total += size
        rest, seen = {}, set()
        for name, t in self.model.state_dict(keep_vars=False).items():
            if self._is_layer_key(name) or t.data_ptr() in seen:  # a tied head is saved once, as the embedding
                continue
            seen.add(t.data_ptr())
            rest[name] = t.detach().contiguous()
        save_file(rest, folder / self.shard_name(self.n_layers), metadata={"format": "pt"})
        for name, t in rest.items():
            weight_map[name] = self.shard_name(self.n_layers)
            total += t.numel() * t.element_size()
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                               indent=2))
        self.model.config.save_pretrained(folder)
        if getattr(self.model, "generation_config", None) is not None:
            self.model.generation_config.save_pretrained(folder)
        shutil.rmtree(self.work, ignore_errors=True)  # emptied: every shard moved out
        return {"format": "hf", "shards": self.n_layers + 1, "streamed": True}



def auto_offload(source: str, choices: tuple[str, ...], device: str, nsamples: int, seqlen: int,
                 dtype: torch.dtype) -> tuple[str, str]:
    """(offload, why) for `--offload auto`: disk when the weights would not fit in the host's available memory,
    none (everything on the GPU) when the weights and three copies of the calibration activations take under
    70% of the GPU's free memory, else cpu."""
    folder = Path(source)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files or not (folder / "config.json").is_file():
        return "cpu", "not a local safetensors directory"
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    stored = torch.finfo(getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"),
                                 torch.float32)).bits // 8
    itemsize = torch.finfo(dtype).bits // 8
    weights = sum(f.stat().st_size for f in files) // stored * itemsize
    activations = nsamples * seqlen * int(config.get("hidden_size", 0)) * itemsize
    host = _available_host_memory()
    gib = 2**30
    if "disk" in choices and host is not None and weights > 0.8 * host:
        return "disk", f"weights {weights / gib:.1f} GiB, host memory available {host / gib:.1f} GiB"
    if device.startswith("cuda") and "none" in choices:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if weights + 3 * activations < 0.7 * free:
            return "none", f"weights {weights / gib:.1f} GiB and activations fit the GPU's {free / gib:.1f} GiB free"
    return "cpu", f"weights {weights / gib:.1f} GiB"


def _available_host_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
