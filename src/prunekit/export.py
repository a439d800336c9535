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

import functools
import json
from pathlib import Path

import torch
import torch.nn as nn

from .methods.slicegpt.layers import restructure
from .sparse.linear import SparseLinear24, kernel_paths
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


def _write_model_files(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """config.json, generation_config.json and the tokenizer files into `directory` (created): all but the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def save_compact(model: nn.Module, directory: str | Path, tokenizer=None) -> dict:
    """Write `model` in the compact format; returns {"bytes": file size, "dense_bytes": size unpacked}."""
    from safetensors.torch import save_file

    directory = _write_model_files(model, directory, tokenizer)
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
    tensors directly (never unpacked; each runs the fastest 2:4 kernel per row count, see SparseLinear24), and
    the model gets a `kernel_paths()` method: {module name: {label: (path, reason)}} of what ran and why
    (PRUNEKIT_LOG=1 prints each decision); otherwise they are unpacked into ordinary nn.Linear weights."""
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
            sparse = SparseLinear24(raw[f"{name}.values"], raw[f"{name}.meta"], bias, info["shape"][1])
            sparse.name = module_name
            setattr(model.get_submodule(parent), child, sparse)
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
    if sparse_modules:
        model.kernel_paths = functools.partial(kernel_paths, model)
    return model.to(device).eval()


# Sliced format (SliceGPT, RotPruner-structured) — a model directory holding
#   config.json           the ORIGINAL architecture's config plus a block
#                         "prunekit_sliced": {"version": 1, "hidden_size": d, "dims": [k_a^0, k_m^0, ..., k_a^L],
#                                             "tied": bool[, "shared_layer_basis": true]}
#                         (the kept width of the embeddings/attention input of each layer, of each MLP input,
#                         and of the head's input: 2L + 1 numbers; "tied": the embedding table stays whole and
#                         shared with the head, with `model.layers.0.in_proj` [d, k_a^0] and
#                         `model.norm.out_proj` [k_a^L, d]; the head is then not stored)
#   model.safetensors     every tensor with its sliced shape, under the original names, plus per layer
#                         `model.layers.<i>.attn_shortcut` [k_a^i, k_m^i] and `.mlp_shortcut` [k_m^i, k_a^{i+1}]
#                         ("shared_layer_basis": one basis per layer, k_m^i = k_a^i, no attn_shortcut stored)
#   tokenizer files, generation_config.json
# `load_sliced_dir` builds the original architecture, gives it the sliced shapes
# (prunekit.methods.slicegpt.layers.restructure) and loads the state dict strictly.
SLICED_KEY = "prunekit_sliced"


def is_sliced_dir(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    try:
        return path.is_file() and SLICED_KEY in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def save_sliced(model: nn.Module, directory: str | Path, tokenizer=None) -> dict:
    """Write a sliced model (see above); returns {"format": "sliced", "bytes": size of the weights}."""
    from safetensors.torch import save_file

    directory = _write_model_files(model, directory, tokenizer)
    state, seen = {}, set()
    for name, t in model.state_dict().items():  # a tied head is stored once, under the table's name
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        state[name] = t.detach().cpu().contiguous()
    save_file(state, directory / "model.safetensors", metadata={"format": "pt", "prunekit": "sliced"})
    return {"format": "sliced", "bytes": (directory / "model.safetensors").stat().st_size}


def load_sliced_dir(directory: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The sliced model saved in `directory`, in eval mode (on the CPU)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    state = load_file(directory / "model.safetensors")
    dtype = dtype or next(iter(state.values())).dtype
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model._prunekit_rotation_invariant = True  # the norms are folded: restructure keeps RMSN without weights
    info = getattr(config, SLICED_KEY)
    restructure(model, info["dims"], tied=info.get("tied", False), shared=info.get("shared_layer_basis", False))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if info.get("tied", False):
        missing = [name for name in missing if name != "lm_head.weight"]  # shares the table's storage
    if missing or unexpected:
        raise ValueError(f"{directory}: sliced weights do not match prunekit_sliced (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    return model.eval()
