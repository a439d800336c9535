"""A rotation-invariant model: norms folded away so that the residual stream can be rotated by any
orthonormal Q without changing the model's function (SliceGPT, Ashkboos et al. 2024, §3; RotPruner §3).

Convention y = x Wᵀ (nn.Linear), residual-stream vectors are rows. After folding, every norm is a
pure normalisation n(h) with unit scale and no bias, and

    RMSNorm:   n(h Q) = n(h) Q            for every orthonormal Q   (‖h Q‖ = ‖h‖)
    LayerNorm: n(h Q) = n(h) Q            when also Q 1 = 1          (Q then commutes with the
                                                                       centring matrix I − 11ᵀ/d)

so rotating the residual stream, i.e.

    E ← E Q (embedding tables)            W_in ← W_in Q (operators that read a norm's output)
    W_out ← Qᵀ W_out, b_out ← b_out Q      (operators that write to the stream)
    head ← head Q                           (and the final LayerNorm's remaining bias b ← b Q)

changes no logit. The LayerNorm condition replaces SliceGPT's centring of every writer: the model
keeps its LayerNorms and stays a standard OPT checkpoint.

Folding (exact, done in float64):
    reader ← reader · diag(g), reader bias ← reader bias + reader · β   (norm scale g, LayerNorm bias β)
    head ← head · diag(g_final); the final LayerNorm keeps the bias β/g so that the head sees β Wᵀ
    tied input/output embeddings are untied first (the head's columns get scaled, the table does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UsageError
from ..models.adapters import Adapter, get_adapter
from .residual import has_residual_rotations


@dataclass(frozen=True)
class LayerSites:
    """One decoder layer's operators that read the residual stream (through a norm) and write to it."""

    readers: tuple[str, ...]  # full module paths
    writers: tuple[str, ...]


@dataclass(frozen=True)
class ResidualStream:
    """Every place where the residual-stream basis shows, as full module/parameter paths of the model."""

    width: int
    embeddings: tuple[str, ...]  # modules whose output rows enter the stream
    layers: tuple[LayerSites, ...]
    row_params: tuple[str, ...]  # parameters that are stream row vectors (writer biases, final LayerNorm bias)
    head: str
    ones_fixed: bool  # LayerNorm models: Q must keep the all-ones direction (Q 1 = 1)

    @property
    def readers(self) -> list[str]:
        return [name for layer in self.layers for name in layer.readers]

    @property
    def writers(self) -> list[str]:
        return [name for layer in self.layers for name in layer.writers]


def residual_stream(model: nn.Module) -> ResidualStream:
    """The residual-stream sites of `model` from its adapter; a UsageError for architectures it cannot rotate."""
    adapter = get_adapter(model)
    _check_rotatable(model, adapter)
    layers = []
    for i, layer in enumerate(adapter.layers()):
        prefix = adapter.layer_prefix(i)
        readers = tuple(f"{prefix}.{name}" for g in adapter.norm_readers for name in adapter.groups[g])
        writers = tuple(f"{prefix}.{name}" for name in adapter.writer_paths)
        layers.append(LayerSites(readers, writers))
    modules = dict(model.named_modules())
    row_params = [f"{w}.bias" for site in layers for w in site.writers if modules[w].bias is not None]
    if adapter.norm_kind == "layer":
        row_params.append(f"{adapter.final_norm_path}.bias")
    width = modules[adapter.embedding_paths[0]].weight.shape[1]
    return ResidualStream(width, adapter.embedding_paths, tuple(layers), tuple(row_params), adapter.head_path,
                          adapter.norm_kind == "layer")


def _check_rotatable(model: nn.Module, adapter: Adapter) -> None:
    name = type(model).__name__
    if not adapter.embedding_paths or not adapter.writer_paths:
        raise UsageError(f"{name}: its adapter does not describe the residual stream, so it cannot be rotated")
    if len(adapter.norm_paths) != len(adapter.norm_readers):
        # Gemma 3: norms after attention and MLP (and on q/k) see the block's output, not the stream's
        raise UsageError(f"{name}: its norms after the attention and MLP blocks do not commute with a rotation of "
                         "the residual stream, so it cannot be rotated; use a layer-wise pruner (e.g. --method wanda)")
    if has_residual_rotations(model):
        raise UsageError(f"{name} already carries residual rotations (a RotPruner result): rotate the dense original")
    config = model.config
    if getattr(config, "model_type", "") == "opt":
        if not getattr(config, "do_layer_norm_before", True):
            raise UsageError("OPT with post-LayerNorm blocks (opt-350m) cannot be made rotation-invariant")
        if config.word_embed_proj_dim != config.hidden_size:
            raise UsageError("OPT with project_in/project_out (word_embed_proj_dim != hidden_size) is not supported")


def is_rotation_invariant(model: nn.Module) -> bool:
    return bool(getattr(model, "_prunekit_rotation_invariant", False))


@torch.no_grad()
def make_rotation_invariant(model: nn.Module) -> ResidualStream:
    """Fold every norm's scale (and LayerNorm bias) into the operators that read it, in place.

    The model computes the same function afterwards (to float rounding). Idempotent."""
    stream = residual_stream(model)
    if is_rotation_invariant(model):
        return stream
    adapter = get_adapter(model)
    untie_head(model, adapter)
    modules = dict(model.named_modules())
    for i, layer in enumerate(adapter.layers()):
        for norm_path, group in zip(adapter.norm_paths, adapter.norm_readers):
            norm = layer.get_submodule(norm_path)
            readers = [layer.get_submodule(name) for name in adapter.groups[group]]
            _fold_norm(norm, readers, f"{adapter.layer_prefix(i)}.{norm_path}")
    _fold_final_norm(modules[adapter.final_norm_path], modules[adapter.head_path])
    model._prunekit_rotation_invariant = True
    return stream


def untie_head(model: nn.Module, adapter: Adapter | None = None) -> None:
    """Give the LM head its own weight when it shares the input embedding table (the head gets the
    final norm's scale folded into its columns and the table must not); the config says untied, so a
    saved model reloads untied."""
    adapter = adapter or get_adapter(model)
    head = model.get_submodule(adapter.head_path)
    table = model.get_submodule(adapter.embedding_paths[0])
    if head.weight is table.weight or head.weight.data_ptr() == table.weight.data_ptr():
        head.weight = nn.Parameter(table.weight.detach().clone(), requires_grad=table.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False


def _fold_norm(norm: nn.Module, readers: list[nn.Linear], where: str) -> None:
    g = norm.weight.detach().double()
    beta = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else None
    for op in readers:
        W = op.weight.detach().double()
        if beta is not None and bool(beta.ne(0).any()):
            if op.bias is None:
                raise UsageError(f"{where}: the norm has a bias but its reader has none; cannot fold it")
            op.bias.copy_((op.bias.double() + W @ beta).to(op.bias.dtype))
        op.weight.copy_((W * g).to(op.weight.dtype))
    norm.weight.fill_(1.0)
    if beta is not None:
        norm.bias.zero_()


def _fold_final_norm(norm: nn.Module, head: nn.Linear) -> None:
    """head ← head·diag(g). A LayerNorm's bias β would reach the logits as β headᵀ; the head has no
    bias to take it (OPT), so the norm keeps β/g: (n + β/g) (head·diag(g))ᵀ = (n·g + β) headᵀ."""
    g = norm.weight.detach().double()
    head.weight.copy_((head.weight.detach().double() * g).to(head.weight.dtype))
    if getattr(norm, "bias", None) is not None:
        if bool(norm.bias.ne(0).any()):
            if bool((g.abs() < 1e-6).any()):
                raise UsageError("final LayerNorm has (near-)zero scales and a bias: cannot fold it into the head")
            norm.bias.copy_((norm.bias.double() / g).to(norm.bias.dtype))
    norm.weight.fill_(1.0)


@torch.no_grad()
def rotate_model(model: nn.Module, Q: torch.Tensor, stream: ResidualStream | None = None) -> None:
    """Fuse the orthonormal Q into the weights of a rotation-invariant model, in place (float64 math).

    Afterwards the model's residual stream carries h Q where it carried h; its logits are unchanged."""
    if not is_rotation_invariant(model):
        raise ValueError("rotate_model needs a rotation-invariant model: call make_rotation_invariant first")
    stream = stream or residual_stream(model)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    Q = Q.detach().to("cpu", torch.float64)

    def update(t: torch.Tensor, fn) -> None:
        t.copy_(fn(t.detach().to("cpu", torch.float64), Q).to(t.device, t.dtype))

    for path in stream.embeddings:
        update(modules[path].weight, lambda E, Q: E @ Q)
    for path in stream.readers + [stream.head]:
        update(modules[path].weight, lambda W, Q: W @ Q)
    for path in stream.writers:
        update(modules[path].weight, lambda W, Q: Q.t() @ W)
    for name in stream.row_params:
        update(params[name], lambda b, Q: b @ Q)
