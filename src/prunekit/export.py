"""Save and load pruned models: the Hugging Face format (zeros in place) or prunekit's compact format.

Compact format — a model directory holding `config.json`, the tokenizer files and
`model.prunekit.safetensors`, one safetensors file whose header metadata has
  "format": "prunekit-compact", "version": "1" or "2" (the oldest reader that understands the file: 2 when it holds
            FP8 weights),
  "layout": JSON {parameter name: {"scheme": "dense" | "2:4" | "bitmask" | "fp8" | "2:4+fp8" | "bitmask+fp8",
                                   "shape": [...], "dtype": "..."[, "activations": "fp8" | "none"]}},
  "tied":   JSON {parameter name: name of the parameter it shares storage with}.
Tensors, by scheme (see prunekit/sparse/packing.py for the bit layouts):
  dense   → `<name>`
  2:4     → `<name>.values` [out, in/2] (the weight's dtype), `<name>.meta` [out, in/8] uint8
  bitmask → `<name>.values` [nnz], `<name>.mask` [out, ceil(in/8)] uint8
  fp8, 2:4+fp8, bitmask+fp8 (version 2): a linear weight quantized to FP8 (prunekit.quantize), W = Q·s. Q is
          stored as dense, 2:4 or bitmask above in float8_e4m3fn bytes ("dtype": "float8_e4m3fn"), plus
          `<name>.scale` [out] fp32, one power-of-two scale per output channel; "activations" says what its layer
          does with its inputs: "fp8" (each token quantized to FP8 on the fly) or "none" (weights only).
Each 2-D weight gets the smallest of dense, 2:4 and bitmask; loading restores every tensor bit for bit (an FP8
weight as its Q and s). Version 1 files load unchanged.

config.json also carries `quantization_config` ({"quant_method": "prunekit", "format": "prunekit-compact",
"version", "schemes": {scheme: count}, "activations"}): after `import prunekit`, transformers'
`AutoModelForCausalLM.from_pretrained(directory)` builds the model that `load_compact(directory, sparse_modules=True)`
builds (prunekit/hf_quantizer.py, whose quantizer points transformers at COMPACT_FILE). config.json names no weights
file, and the directory has no model.safetensors, so transformers without prunekit (which skips the unknown
quant_method) finds no weights and raises instead of building the model with its packed weights random.
Directories written before that carry `transformers_weights` (COMPACT_FILE's name) in config.json: prunekit loads
them unchanged, transformers alone still loads them wrong; saving them again with save_compact drops the key.
`load_compact` drops both keys from the model's config: they describe the file, not the model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UsageError
from .methods.slicegpt.layers import restructure
from .quantize.linear import LinearFP8
from .rotation.residual import has_residual_rotations
from .sparse.linear import SparseLinear24, kernel_paths
from .sparse.linear_fp8 import SparseLinear24FP8
from .sparse.packing import is_24, nonzero_bits, pack_24, pack_bitmask, unpack_24, unpack_bitmask

COMPACT_FILE = "model.prunekit.safetensors"
FORMAT = "prunekit-compact"
VERSIONS = ("1", "2")  # what load_compact reads; a file is written as 1 unless it holds FP8 weights
#: the scheme of an FP8 weight, by the packing of its Q
FP8_SCHEMES = {"dense": "fp8", "2:4": "2:4+fp8", "bitmask": "bitmask+fp8"}
#: config.json's key that describes the file, and the one that directories written before also name the file under
#: (transformers loads the file it names even without prunekit: hf_quantizer sets it at load time instead)
QUANTIZATION_KEY, WEIGHTS_KEY = "quantization_config", "transformers_weights"


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


def stored_packing(scheme: str) -> str:
    """The packing of Q for an FP8 scheme ("2:4+fp8" → "2:4", "fp8" → "dense"); other schemes are their own."""
    return {fp8: packing for packing, fp8 in FP8_SCHEMES.items()}.get(scheme, scheme)


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


def _stored_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, str | None]]:
    """{parameter name: (tensor, FP8 scale or None, activations or None)}: the model's state dict with every packed
    or FP8 layer's weight under `<module>.weight` — unpacked (a SparseLinear24's in its dtype, an FP8 layer's as Q)
    with its scales — and every other tensor as it is."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (SparseLinear24, LinearFP8))}
    weights = {}
    for name, t in model.state_dict().items():
        owner, _, attr = name.rpartition(".")
        layer = layers.get(owner)
        if layer is None or attr == "bias":
            weights[name] = (t, None, None)
        elif isinstance(layer, SparseLinear24FP8) and attr == "values":
            weights[f"{owner}.weight"] = (layer.fp8_weight(), layer.weight_scale, layer.activations)
        elif isinstance(layer, LinearFP8) and attr == "weight":
            weights[f"{owner}.weight"] = (layer.weight, layer.weight_scale, layer.activations)
        elif isinstance(layer, SparseLinear24) and not isinstance(layer, SparseLinear24FP8) and attr == "values":
            weights[f"{owner}.weight"] = (layer.dense_weight(), None, None)
        # meta and weight_scale are stored with their weight
    return weights


def save_compact(model: nn.Module, directory: str | Path, tokenizer=None) -> dict:
    """Write `model` in the compact format; returns {"bytes": file size, "dense_bytes": size unpacked}
    (unpacked: every tensor as the model holds it, FP8 weights at one byte each)."""
    from safetensors.torch import save_file

    if has_residual_rotations(model):
        raise UsageError("a model with residual rotations (RotPruner) is saved in the Hugging Face format "
                         "(save_pretrained), which keeps its d x d products; the compact format does not store them")
    directory = _write_model_files(model, directory, tokenizer)
    tensors, layout, tied, seen = {}, {}, {}, {}
    dense_bytes = 0
    for name, (t, scale, activations) in _stored_weights(model).items():
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
        if scale is not None:
            layout[name].update(scheme=FP8_SCHEMES[scheme], activations=activations)
            tensors[f"{name}.scale"] = scale.detach().float().cpu().contiguous()
            dense_bytes += scale.numel() * 4
    version = VERSIONS[1] if any("activations" in info for info in layout.values()) else VERSIONS[0]
    path = directory / COMPACT_FILE
    save_file(tensors, path, metadata={"format": FORMAT, "version": version,
                                       "layout": json.dumps(layout), "tied": json.dumps(tied)})
    _point_transformers_at(directory, layout, version)
    return {"bytes": path.stat().st_size, "dense_bytes": dense_bytes}


def _point_transformers_at(directory: Path, layout: dict, version: str) -> None:
    """Add `quantization_config` to config.json, and no weights file name (module docstring)."""
    schemes: dict[str, int] = {}
    for info in layout.values():
        schemes[info["scheme"]] = schemes.get(info["scheme"], 0) + 1
    activations = sorted({info["activations"] for info in layout.values() if "activations" in info})
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config[QUANTIZATION_KEY] = {"quant_method": "prunekit", "format": FORMAT, "version": version, "schemes": schemes,
                                "activations": activations[0] if len(activations) == 1 else activations or None}
    config.pop(WEIGHTS_KEY, None)  # never name the file here: transformers alone would load it
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_compact_header(directory: str | Path) -> tuple[dict, dict]:
    """(layout, tied) from a compact file's header; ValueError for a file that is not one, or too new."""
    from safetensors import safe_open

    path = Path(directory) / COMPACT_FILE
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prunekit compact file")
    if meta.get("version") not in VERSIONS:
        raise ValueError(f"{path} is compact format version {meta.get('version')}; this prunekit reads versions "
                         f"{', '.join(VERSIONS)}: upgrade prunekit")
    return json.loads(meta["layout"]), json.loads(meta["tied"])


def model_dtype(layout: dict) -> torch.dtype:
    """The dtype the model computes in: that of its first tensor that is not FP8."""
    return getattr(torch, next(info["dtype"] for info in layout.values() if "activations" not in info))


def layer_class(info: dict, sparse_modules: bool) -> type[nn.Module] | None:
    """The module a compact linear weight loads as, or None for an ordinary nn.Linear (dense, bitmask, and 2:4
    without `sparse_modules`): 2:4 packings stay packed with `sparse_modules` (SparseLinear24, SparseLinear24FP8),
    other FP8 weights become LinearFP8."""
    scheme = info["scheme"]
    if scheme == "2:4":
        return SparseLinear24 if sparse_modules else None
    if scheme == "2:4+fp8":
        return SparseLinear24FP8 if sparse_modules else LinearFP8
    return LinearFP8 if scheme in FP8_SCHEMES.values() else None


def compact_layer(info: dict, part, bias: torch.Tensor | None, sparse_modules: bool) -> nn.Module | None:
    """`layer_class(info, sparse_modules)` built from `part(suffix)`, the weight's stored tensor `<name><suffix>`
    (".values", ".meta", ".scale"; "" the unpacked weight), or None."""
    cls, cols = layer_class(info, sparse_modules), info["shape"][-1]
    if cls is SparseLinear24:
        return SparseLinear24(part(".values"), part(".meta"), bias, cols)
    if cls is SparseLinear24FP8:
        return SparseLinear24FP8(part(".values"), part(".meta"), part(".scale"), bias, cols, info["activations"])
    if cls is LinearFP8:
        return LinearFP8(part(""), part(".scale"), bias, info["activations"])
    return None


def _unpacked(name: str, info: dict, raw: dict) -> torch.Tensor:
    """The tensor a layout entry stores, unpacked (an FP8 weight: its Q)."""
    packing = stored_packing(info["scheme"])
    if packing == "2:4":
        return unpack_24(raw[f"{name}.values"], raw[f"{name}.meta"])
    if packing == "bitmask":
        return unpack_bitmask(raw[f"{name}.values"], raw[f"{name}.mask"], info["shape"][1])
    return raw[name]


def load_compact(directory: str | Path, sparse_modules: bool = False, device: str = "cpu") -> nn.Module:
    """A transformers model from a compact directory, every tensor restored bit for bit.

    With `sparse_modules`, 2:4 linear weights become SparseLinear24 modules (SparseLinear24FP8 for FP8 ones) built
    from the packed tensors directly (never unpacked; each runs the fastest 2:4 kernel per row count, see
    SparseLinear24), and the model gets a `kernel_paths()` method: {module name: {label: (path, reason)}} of what
    ran and why (PRUNEKIT_LOG=1 prints each decision); otherwise they are unpacked into ordinary nn.Linear weights
    (LinearFP8 for FP8 ones, as are FP8 weights stored dense or as a bitmask)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    layout, tied = read_compact_header(directory)
    with safe_open(directory / COMPACT_FILE, framework="pt", device=device) as f:
        raw = {key: f.get_tensor(key) for key in f.keys()}
    config = AutoConfig.from_pretrained(directory)
    for key in (QUANTIZATION_KEY, WEIGHTS_KEY):
        if hasattr(config, key):
            delattr(config, key)
    with no_init_weights():  # parameters are overwritten below; buffers such as rotary inv_freq are built normally
        model = AutoModelForCausalLM.from_config(config, dtype=model_dtype(layout))
    state, replaced = {}, set()
    for name, info in layout.items():
        module_name = name.removesuffix(".weight")
        layer = None
        if name.endswith(".weight") and layer_class(info, sparse_modules) is not None:
            linear = model.get_submodule(module_name)
            bias = raw.get(f"{module_name}.bias", linear.bias.data if getattr(linear, "bias", None) is not None
                           else None)
            layer = compact_layer(info, lambda suffix: (raw[name + suffix] if suffix else _unpacked(name, info, raw)),
                                  bias, sparse_modules)
        if layer is None:
            state[name] = _unpacked(name, info, raw)
            continue
        layer.name = module_name
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        replaced.add(module_name)
    for name, target in tied.items():
        if target in state:
            state[name] = state[target]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if {n for n in missing if n.rpartition(".")[0] not in replaced} or unexpected:
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
