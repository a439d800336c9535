"""Residual rotations (RotPruner §3.2): besides the global rotation Q of the residual stream, each attention
and/or MLP block b works in its own rotated space, given by one more orthonormal matrix A_g.

    g = (kind, l // K)           the group of block b (kind "attn" or "mlp", layer l): K consecutive layers
                                 share one A_g (`--share-every K`; the authors share one per 4 layers)
    x_b = n(h) A_g               the block's input (n: its folded norm, h: the stream in Q's basis)
    W_in  ← W_in Q A_g           its readers (q/k/v, gate/up, fc1), pruned in that space
    W_out ← A_gᵀ Qᵀ W_out        its writer (o_proj, down_proj, fc2; a bias b ← b Q A_g), pruned in that space
    h ← h + o_b A_gᵀ             the block's output taken back to Q's basis before the residual add

Since A_g A_gᵀ = I the dense model computes the same function for every A (x_b (W_in Q A_g)ᵀ = n(h) Qᵀ W_inᵀ,
and the writer's output times A_gᵀ is what it wrote before). A_g sits after the norm, so it needs no
condition of its own, not even on LayerNorm models (OPT), where only Q must keep the all-ones direction.

The two products cannot be fused into the weights without losing the sparsity (W_out A_gᵀ is dense), so at
inference they are explicit d × d matmuls: a forward hook on the block's norm (× A_g) and one on its writer
(× A_gᵀ). `into_block` and `out_of_block` are that rule, used by the training view (rotation/view.py, A
differentiable) and by the installed model alike. The writer's hook follows the module at the writer's path,
so a writer that prunekit later swaps (a 2:4 kernel, an FP8 layer, a LoRA wrapper) keeps its product.

A model with residual rotations holds its A_g as buffers of a `ResidualRotations` module at
`model.residual_rotations` (state-dict keys `residual_rotations.attn_0`, ...; in the model's dtype) and says so
in `config.quantization_config` ({"quant_method": "prunekit", "format": FORMAT, ...}). Its `save_pretrained`
writes the weights as WEIGHTS_FILE instead of model.safetensors, so that transformers without prunekit finds no
weights and refuses the directory (it would otherwise skip the unknown quantization method with a warning and
load the model without its products: wrong logits); after `import prunekit`, `from_pretrained` loads it through
prunekit's quantizer (hf_quantizer.py), which calls `attach` and `finish_loading` below.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UsageError
from ..models.adapters import get_adapter

CHOICES = ("none", "attn", "mlp", "both")
KINDS = ("attn", "mlp")  # in the adapters' order: norm_paths, norm_readers and writer_paths list attn first
ATTRIBUTE = "residual_rotations"  # where the holder sits on the model
FORMAT = "prunekit-residual-rotations"
VERSION = "1"
WEIGHTS_FILE = "model.prunekit-residual.safetensors"


def kinds_of(choice: str) -> tuple[str, ...]:
    """The block kinds that `--residual-rotations choice` rotates."""
    return {"none": (), "attn": ("attn",), "mlp": ("mlp",), "both": KINDS}[choice]


def group_name(kind: str, layer: int, share_every: int) -> str:
    return f"{kind}_{layer // share_every}"


@dataclass(frozen=True)
class Block:
    """One rotated block: its group g and the full module paths of its norm, readers and writer."""

    kind: str
    layer: int
    group: str
    norm: str
    readers: tuple[str, ...]
    writer: str


def blocks(model: nn.Module, kinds: tuple[str, ...], share_every: int) -> list[Block]:
    """The rotated blocks of `model`, layer by layer (attention before MLP)."""
    adapter = get_adapter(model)
    if len(adapter.norm_paths) != len(KINDS) or len(adapter.writer_paths) != len(KINDS):
        raise UsageError(f"{model.config.model_type}: residual rotations need one norm and one writer per attention "
                         "and MLP block")
    out = []
    for layer in range(len(adapter.layers())):
        prefix = adapter.layer_prefix(layer)
        for k, kind in enumerate(KINDS):
            if kind in kinds:
                readers = tuple(f"{prefix}.{name}" for name in adapter.groups[adapter.norm_readers[k]])
                out.append(Block(kind, layer, group_name(kind, layer, share_every), f"{prefix}.{adapter.norm_paths[k]}",
                                 readers, f"{prefix}.{adapter.writer_paths[k]}"))
    return out


def groups(block_list: list[Block]) -> list[str]:
    """The distinct groups g of `block_list`, in order."""
    return list(dict.fromkeys(b.group for b in block_list))


def into_block(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """x_b = n(h) A_g: the block's norm output in the block's space."""
    return x @ A.to(x.device, x.dtype)


def out_of_block(o: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """o_b A_gᵀ: the block's writer output back in the stream's basis."""
    return o @ A.t().to(o.device, o.dtype)


@contextmanager
def block_products(model: nn.Module, block_list: list[Block], A: Mapping[str, torch.Tensor]):
    """While inside, every block of `block_list` computes with the products by A[g] (for the training view:
    A differentiable, hooks removed on exit)."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for b in block_list:
            handles.append(modules[b.norm].register_forward_hook(
                lambda mod, args, out, g=b.group: into_block(out, A[g])))
            handles.append(modules[b.writer].register_forward_hook(
                lambda mod, args, out, g=b.group: out_of_block(out, A[g])))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def fuse(model: nn.Module, block_list: list[Block], A: Mapping[str, torch.Tensor]) -> None:
    """W_in ← W_in A_g, W_out ← A_gᵀ W_out, b_out ← b_out A_g, in place (float64 math), for a model whose Q is
    already fused (rotation.rotate_model): its readers and writers then hold W_in Q A_g and A_gᵀ Qᵀ W_out."""
    modules = dict(model.named_modules())

    def update(t: torch.Tensor, fn) -> None:
        t.copy_(fn(t.detach().to("cpu", torch.float64)).to(t.device, t.dtype))

    for b in block_list:
        Ag = A[b.group].detach().to("cpu", torch.float64)
        for path in b.readers:
            update(modules[path].weight, lambda W: W @ Ag)
        writer = modules[b.writer]
        update(writer.weight, lambda W: Ag.t() @ W)
        if writer.bias is not None:
            update(writer.bias, lambda v: v @ Ag)


class ResidualRotations(nn.Module):
    """The A_g of a model, one buffer per group (`attn_0`, `mlp_3`, ...), and what produced them."""

    def __init__(self, kinds: tuple[str, ...], share_every: int, layers: int, width: int,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.kinds, self.share_every, self.layers, self.width = tuple(kinds), share_every, layers, width
        for g in dict.fromkeys(group_name(k, l, share_every) for l in range(layers) for k in KINDS if k in kinds):
            self.register_buffer(g, torch.empty(width, width, dtype=dtype, device=device))

    def spec(self) -> dict:
        return {"kinds": list(self.kinds), "share_every": self.share_every, "layers": self.layers,
                "width": self.width}

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}, share_every={self.share_every}, groups={len(list(self.buffers()))}"


class _IntoBlock:
    """Forward hook of a block's norm: × A_g. A callable object rather than a closure, so that a deep copy
    of a layer (prunekit.correction) reads the copied holder."""

    def __init__(self, holder: ResidualRotations, group: str):
        self.holder, self.group = holder, group

    def __call__(self, module, args, out):
        return into_block(out, getattr(self.holder, self.group))


class _OutOfBlock:
    """Forward pre-hook of the writer's parent: keeps a hook (× A_gᵀ) on whatever module sits at the writer's
    path when the parent runs, so that swapping the writer for another module keeps the product."""

    def __init__(self, holder: ResidualRotations, group: str, child: str):
        self.holder, self.group, self.child = holder, group, child
        self.module, self.handle = None, None

    def __call__(self, parent, args):
        current = getattr(parent, self.child)
        if current is not self.module:
            if self.handle is not None:
                self.handle.remove()
            self.module, self.handle = current, current.register_forward_hook(self.product)
        return None

    def product(self, module, args, out):
        return out_of_block(out, getattr(self.holder, self.group))


def has_residual_rotations(model: nn.Module) -> bool:
    return isinstance(getattr(model, ATTRIBUTE, None), ResidualRotations)


def install(model: nn.Module, A: Mapping[str, torch.Tensor], kinds: tuple[str, ...], share_every: int) -> None:
    """Give `model` (its Q and A fused) the products of its residual rotations: the holder of A_g in the model's
    dtype, the hooks, the config entry and the save_pretrained that keeps transformers alone from loading it."""
    adapter = get_adapter(model)
    width = next(iter(A.values())).shape[0]
    weight = adapter.layers()[0].get_submodule(adapter.writer_paths[0]).weight
    holder = ResidualRotations(kinds, share_every, len(adapter.layers()), width, weight.dtype, weight.device)
    if set(A) != {name for name, _ in holder.named_buffers()}:
        raise ValueError(f"residual rotations {sorted(A)} do not match the groups of {kinds} shared by {share_every}")
    for g, Ag in A.items():
        getattr(holder, g).copy_(Ag.detach())
    setattr(model, ATTRIBUTE, holder)
    model.config.quantization_config = quantization_config(holder)
    finish_loading(model)


def quantization_config(holder: ResidualRotations) -> dict:
    """config.json's `quantization_config` of a model with residual rotations (hf_quantizer.PrunekitConfig)."""
    return {"quant_method": "prunekit", "format": FORMAT, "version": VERSION, "weights": WEIGHTS_FILE,
            "residual_rotations": holder.spec()}


def attach(model: nn.Module, spec: Mapping) -> None:
    """Before from_pretrained loads the weights: an empty holder of the stored groups, in the model's dtype, for
    the weights to fill (hf_quantizer.PrunekitQuantizer)."""
    if sorted(spec) != ["kinds", "layers", "share_every", "width"] or not set(spec["kinds"]) <= set(KINDS):
        raise ValueError(f"unknown residual_rotations entry {dict(spec)}: upgrade prunekit")
    weight = next(model.parameters())
    setattr(model, ATTRIBUTE, ResidualRotations(tuple(spec["kinds"]), int(spec["share_every"]), int(spec["layers"]),
                                                int(spec["width"]), weight.dtype, weight.device))


def finish_loading(model: nn.Module) -> None:
    """The hooks of the products and the save_pretrained override, for a model whose holder holds its A_g."""
    holder = getattr(model, ATTRIBUTE)
    modules = dict(model.named_modules())
    for b in blocks(model, holder.kinds, holder.share_every):
        modules[b.norm].register_forward_hook(_IntoBlock(holder, b.group))
        parent, _, child = b.writer.rpartition(".")
        modules[parent].register_forward_pre_hook(_OutOfBlock(holder, b.group, child))
    model.save_pretrained = functools.partial(save_pretrained, model)


def save_pretrained(model: nn.Module, save_directory, *args, **kwargs) -> None:
    """transformers' save_pretrained, then the weights renamed to WEIGHTS_FILE (a sharded index to WEIGHTS_FILE
    + ".index.json", its shards keep their names) and config.json told the name."""
    if kwargs.get("push_to_hub"):  # transformers would upload before the rename: a directory others cannot load
        raise UsageError("a model with residual rotations is pushed as a saved folder: save_pretrained(directory), "
                         "then upload the directory")
    type(model).save_pretrained(model, save_directory, *args, **kwargs)
    directory = Path(save_directory)
    for plain, ours in (("model.safetensors", WEIGHTS_FILE), ("model.safetensors.index.json", WEIGHTS_FILE + ".index.json")):
        if (directory / plain).is_file():
            (directory / plain).replace(directory / ours)
            break
    else:
        raise UsageError(f"{directory}: save_pretrained wrote no model.safetensors; a model with residual rotations "
                         "is saved as safetensors only")
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"]["weights"] = ours
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def is_residual_dir(directory) -> bool:
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text()).get("quantization_config", {}).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
