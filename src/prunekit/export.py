"""Save and load pruned models: the Hugging Face format (zeros in place) or prunekit's compact format.

Compact format — a model directory holding `config.json`, the tokenizer files and
`model.prunekit.safetensors`, one safetensors file whose header metadata has
  "format": "prunekit-compact", "version": "1",
  "layout": JSON {parameter name: {"scheme": "dense" | "2:4" | "bitmask", "shape": [...], "dtype": "..."}},
  "tied":   JSON {parameter name: name of the parameter it shares storage with}.
Tensors, by scheme (see prunekit/sparse/packing.py for the bit layouts):
  dense   → `<name>`
  2:4     → `<name>.values` [out, in/2] (the weight's dtype), `<name>.meta` [out, in/8] uint8
  bitmask → `<name>.values` [nnz], `<name>.mask` [out, ceil(in/8)] uint8
Each 2-D weight gets the smallest of the three; loading restores every tensor bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from .sparse.linear import SparseLinear24
from .sparse.packing import is_24, nonzero_bits, pack_24, pack_bitmask, unpack_24, unpack_bitmask

COMPACT_FILE = "model.prunekit.safetensors"
FORMAT, VERSION = "prunekit-compact", "1"


def is_compact(directory: str | Path) -> bool:
    return (Path(directory) / COMPACT_FILE).is_file()


def _scheme(t: torch.Tensor) -> str:
    """The smallest lossless storage of a tensor."""
    if t.dim() != 2 or not t.is_floating_point():
        return "dense"
    size = {"2:4": t.numel() // 2 * t.element_size() + t.numel() // 8} if is_24(t) else {}
    size["bitmask"] = int(nonzero_bits(t).sum()) * t.element_size() + t.shape[0] * -(-t.shape[1] // 8)
    size["dense"] = t.numel() * t.element_size()
    return min(size, key=size.get)  # on a tie the first: 2:4 (it also runs fast), then bitmask


def save_compact(model: nn.Module, directory: str | Path, tokenizer=None) -> dict:
    """Write `model` in the compact format; returns {"bytes": file size, "dense_bytes": size unpacked}."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    tensors, layout, tied, seen = {}, {}, {}, {}
    dense_bytes = 0
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # tied weights (e.g. lm_head = embeddings) are stored once
            tied[name] = seen[key]
            continue
        seen[key] = name
        dense_bytes += t.numel() * t.element_size()
        scheme = _scheme(t)
        layout[name] = {"scheme": scheme, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if scheme == "2:4":
            tensors[f"{name}.values"], tensors[f"{name}.meta"] = pack_24(t)
        elif scheme == "bitmask":
            tensors[f"{name}.values"], tensors[f"{name}.mask"] = pack_bitmask(t)
        else:
            tensors[name] = t.contiguous()
    path = directory / COMPACT_FILE
    save_file(tensors, path, metadata={"format": FORMAT, "version": VERSION,
                                       "layout": json.dumps(layout), "tied": json.dumps(tied)})
    return {"bytes": path.stat().st_size, "dense_bytes": dense_bytes}


def load_compact(directory: str | Path, sparse_modules: bool = False, device: str = "cpu") -> nn.Module:
    """A transformers model from a compact directory, every tensor restored bit for bit.

    With `sparse_modules`, 2:4 linear weights become SparseLinear24 modules built from the packed
    tensors directly (never unpacked); otherwise they are unpacked into ordinary nn.Linear weights."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    with safe_open(directory / COMPACT_FILE, framework="pt", device=device) as f:
        meta = f.metadata()
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory / COMPACT_FILE} is not a prunekit compact file")
        layout, tied = json.loads(meta["layout"]), json.loads(meta["tied"])
        raw = {key: f.get_tensor(key) for key in f.keys()}
    config = AutoConfig.from_pretrained(directory)
    dtype = getattr(torch, next(iter(layout.values()))["dtype"])
    with no_init_weights():  # parameters are overwritten below; buffers such as rotary inv_freq are built normally
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {}
    for name, info in layout.items():
        if info["scheme"] == "2:4" and sparse_modules and name.endswith(".weight"):
            module_name = name.removesuffix(".weight")
            parent, _, child = module_name.rpartition(".")
            linear = model.get_submodule(module_name)
            bias = raw.get(f"{module_name}.bias", linear.bias.data if linear.bias is not None else None)
            setattr(model.get_submodule(parent), child,
                    SparseLinear24(raw[f"{name}.values"], raw[f"{name}.meta"], bias, info["shape"][1]))
        elif info["scheme"] == "2:4":
            state[name] = unpack_24(raw[f"{name}.values"], raw[f"{name}.meta"])
        elif info["scheme"] == "bitmask":
            state[name] = unpack_bitmask(raw[f"{name}.values"], raw[f"{name}.mask"], info["shape"][1])
        else:
            state[name] = raw[name]
    for name, target in tied.items():
        if target in state:
            state[name] = state[target]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    expected_missing = {n for n in missing if n.rpartition(".")[0] in {m for m, mod in model.named_modules()
                                                                      if isinstance(mod, SparseLinear24)}}
    if set(missing) - expected_missing or unexpected:
        raise ValueError(f"{directory}: compact file does not match the config (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(device).eval()
