"""The sliced model's modules (SliceGPT, Ashkboos et al. 2024, §3–4), and the surgery that builds them.

Notation: y = x Wᵀ (nn.Linear), residual-stream vectors are rows, d the original hidden size. The
model is first made rotation-invariant (prunekit.rotation: norm scales folded into their readers, so
every norm is n(h) = h / rms(h)). Each place where the residual stream is read gets an orthonormal basis
U (d × k, the top-k principal directions): the attention input of layer l (U_a^l, also the output basis
of layer l−1, U_a^0 the embeddings' basis), the MLP input of layer l (U_m^l), and the head's input
(U_a^L). With sliced signals x = h U:

    embeddings   E ← E U_a^0
    attention    W_{q,k,v} ← W U_a^l      W_o ← (U_m^l)ᵀ W_o      shortcut S_attn = (U_a^l)ᵀ U_m^l
    MLP          W_{gate,up} ← W U_m^l    W_down ← (U_a^{l+1})ᵀ W_down   shortcut S_mlp = (U_m^l)ᵀ U_a^{l+1}
    head         W_head ← W_head U_a^L

and a layer computes  m = x S_attn + attn(n(x)),  y = m S_mlp + mlp(n(m)).

Shared layer basis (`shared`): U_m^l = U_a^l, so S_attn = I and is not stored: m = x + attn(n(x)).

Norms: RMSNorm commutes with an orthonormal Q only when every dimension is kept, so the sliced model's
norms are RMSN(x) = x / sqrt(‖x‖² / d + ε) with d the ORIGINAL width (no weight: it is folded): on an
unsliced rotated signal it equals the original norm exactly, on a sliced one it is the norm of the
signal projected on span(U) (‖x‖ = ‖x Uᵀ‖). So at k = d (slicing 0) the model computes the dense function.

Tied input/output embeddings (`tied`, e.g. SmolLM2): slicing both ends would untie the head and add a
V × k matrix. Instead the shared table E stays whole and two small matrices join it to the sliced stream:
layer 0 reads x = E[ids] U_a^0 (`in_proj` = U_a^0, d × k), and the final norm writes
z = RMSN(x) (U_a^L)ᵀ diag(g) (`out_proj`, k × d; g the final norm's scale), so that logits = z Eᵀ.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from ...engine import OFFLOAD
from ...errors import UsageError
from ...models.adapters import LlamaAdapter, get_adapter
from . import fused_norm


class RMSN(nn.Module):
    """x / sqrt(‖x‖² / mean_dim + ε): an RMSNorm without weight whose mean is over the original width;
    with `out_proj` (the final norm of a tied model) its output is multiplied by it."""

    def __init__(self, mean_dim: int, eps: float = 1e-6, out_proj: torch.Tensor | None = None):
        super().__init__()
        self.mean_dim, self.eps = mean_dim, eps
        self.out_proj = None if out_proj is None else nn.Parameter(out_proj, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # half-precision inference on CUDA: one kernel (fp32 and training keep the path the quality runs used)
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and not torch.is_grad_enabled() \
                and fused_norm.available():
            y = fused_norm.rms_norm(x, self.mean_dim, self.eps)
        else:
            h = x.float()
            y = (h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) / self.mean_dim + self.eps)).to(x.dtype)
        return y if self.out_proj is None else y @ self.out_proj.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean_dim={self.mean_dim}, eps={self.eps}"


class SlicedLlamaLayer(nn.Module):
    """A Llama-family decoder layer on sliced residual signals: m = x S_attn + attn(n(x)), y = m S_mlp + mlp(n(m)).

    Keeps the original attention and MLP modules (their weights sliced in place) and their names, so
    the state dict keys are the original ones plus `attn_shortcut` (absent when it is the identity: a
    shared layer basis) and `mlp_shortcut`."""

    def __init__(self, layer: nn.Module, mean_dim: int, eps: float, attn_shortcut: torch.Tensor | None,
                 mlp_shortcut: torch.Tensor, in_proj: torch.Tensor | None = None):
        super().__init__()
        # layer 0 of a tied model: the full-width embeddings are projected on U_a^0 first
        self.in_proj = None if in_proj is None else nn.Parameter(in_proj, requires_grad=False)
        self.self_attn, self.mlp = layer.self_attn, layer.mlp
        self.input_layernorm, self.post_attention_layernorm = RMSN(mean_dim, eps), RMSN(mean_dim, eps)
        self.attn_shortcut = None if attn_shortcut is None else nn.Parameter(attn_shortcut, requires_grad=False)
        self.mlp_shortcut = nn.Parameter(mlp_shortcut, requires_grad=False)
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.in_proj is not None:
            hidden_states = hidden_states @ self.in_proj.to(hidden_states.dtype)
        h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        m = _add_shortcut(h, hidden_states, self.attn_shortcut)
        return _add_shortcut(self.mlp(self.post_attention_layernorm(m)), m, self.mlp_shortcut)


def _add_shortcut(out: torch.Tensor, x: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
    """out + x S, accumulated into `out` by the GEMM itself (in-place addmm, β = 1): one kernel where the
    dense layer's residual add also takes one. `out` is a fresh product (o_proj / down_proj output), which
    autograd does not need for the backward pass, so updating it in place is safe. S = None: the identity
    (a shared layer basis), out + x."""
    if shortcut is None:
        return out + x
    k = shortcut.shape[1]
    acc = out.reshape(-1, k)
    acc.addmm_(x.reshape(-1, x.shape[-1]), shortcut.to(x.dtype))
    return acc.view(out.shape)


def check_sliceable(model: nn.Module) -> None:
    """SliceGPT is implemented for the Llama family (Llama, Mistral, Qwen2/3, SmolLM); a UsageError otherwise."""
    adapter = get_adapter(model)
    if type(adapter) is not LlamaAdapter:
        why = (" (its norms after attention and MLP take the RMS of the full-width output, so the writers "
               "cannot be sliced; see BENCHMARKS.md)" if model.config.model_type.startswith("gemma") else "")
        raise UsageError(f"slicing supports the pre-norm Llama family ({', '.join(LlamaAdapter.model_types)}), "
                         f"not {model.config.model_type!r}{why}; use --method wanda-channels for structured "
                         f"pruning of this model")


def _rms_eps(model: nn.Module) -> float:
    return float(getattr(model.config, "rms_norm_eps", 1e-6))


def _placeholder(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(torch.zeros(shape, dtype=old.dtype, device=old.device), requires_grad=False))


def _resize(linear: nn.Linear, out_features: int, in_features: int) -> None:
    _placeholder(linear, "weight", (out_features, in_features))
    if linear.bias is not None and linear.bias.shape[0] != out_features:
        _placeholder(linear, "bias", (out_features,))
    linear.out_features, linear.in_features = out_features, in_features


def restructure(model: nn.Module, dims: list[int], tied: bool = False, shared: bool = False) -> dict:
    """Give a Llama-family model the sliced shapes (placeholder zero weights of the sliced sizes, sliced
    layers, RMSN norms) for the widths `dims` = [k_a^0, k_m^0, ..., k_a^L]; returns the `prunekit_sliced`
    description, also stored on `model.config`. Weights come after, from `sliced_tensors` or a state dict.
    `tied`: keep the embedding table and the head whole and tied; `shared`: one basis per layer, no
    attention shortcut (module docstring)."""
    check_sliceable(model)
    adapter = get_adapter(model)
    layers = adapter.layers()
    if len(dims) != 2 * len(layers) + 1:
        raise ValueError(f"need {2 * len(layers) + 1} widths for {len(layers)} layers, got {len(dims)}")
    if shared and any(dims[2 * i] != dims[2 * i + 1] for i in range(len(layers))):
        raise ValueError("a shared layer basis needs the same width at a layer's attention and MLP inputs")
    d, eps = model.config.hidden_size, _rms_eps(model)
    embed = model.get_submodule(adapter.embedding_paths[0])
    if not tied:
        _placeholder(embed, "weight", (embed.weight.shape[0], dims[0]))
        embed.embedding_dim = dims[0]
    for i in range(len(layers)):
        layer, ka, km, kn = layers[i], dims[2 * i], dims[2 * i + 1], dims[2 * i + 2]
        attn, mlp = layer.self_attn, layer.mlp
        for op in (attn.q_proj, attn.k_proj, attn.v_proj):
            _resize(op, op.out_features, ka)
        _resize(attn.o_proj, km, attn.o_proj.in_features)
        for op in (mlp.gate_proj, mlp.up_proj):
            _resize(op, op.out_features, km)
        _resize(mlp.down_proj, kn, mlp.down_proj.in_features)
        dtype = attn.q_proj.weight.dtype
        in_proj = torch.zeros(d, ka, dtype=dtype) if tied and i == 0 else None
        attn_shortcut = None if shared else torch.zeros(ka, km, dtype=dtype)
        layers[i] = SlicedLlamaLayer(layer, d, eps, attn_shortcut, torch.zeros(km, kn, dtype=dtype), in_proj)
    head = model.get_submodule(adapter.head_path)
    if tied:
        head.weight = embed.weight
        for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            config.tie_word_embeddings = True
    else:
        _resize(head, head.out_features, dims[-1])
    parent, _, child = adapter.final_norm_path.rpartition(".")
    out_proj = torch.zeros(dims[-1], d, dtype=embed.weight.dtype) if tied else None
    setattr(model.get_submodule(parent), child, RMSN(d, eps, out_proj))
    info = {"version": 1, "hidden_size": d, "dims": [int(k) for k in dims], "tied": bool(tied)}
    if shared:
        info["shared_layer_basis"] = True
    model.config.prunekit_sliced = info
    model._prunekit_sliced = True
    return info


def dense_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies (on the CPU) of the tensors that slicing changes, by parameter name."""
    adapter = get_adapter(model)
    names = {adapter.embedding_paths[0] + ".weight", adapter.head_path + ".weight"}
    for i in range(len(adapter.layers())):
        p = adapter.layer_prefix(i)
        names |= {f"{p}.{op}.{kind}" for op in READERS + WRITERS for kind in ("weight", "bias")}
    return {name: t.detach().to(OFFLOAD).clone() for name, t in model.named_parameters() if name in names}


READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def sliced_layer_tensors(dense: dict[str, torch.Tensor], prefix: str, Ua: torch.Tensor, Um: torch.Tensor,
                         Un: torch.Tensor, shared: bool, in_proj: bool = False) -> dict[str, torch.Tensor]:
    """Decoder layer `prefix`'s sliced tensors (module docstring) from the dense ones and its bases U_a^l, U_m^l,
    U_a^{l+1}, named relative to the layer, in the bases' dtype: W_{q,k,v} U_a, W_{gate,up} U_m, U_mᵀ W_o,
    U_a^{l+1}ᵀ W_down (biases b U), S_attn = U_aᵀ U_m (not `shared`), S_mlp = U_mᵀ U_a^{l+1}; `in_proj` = U_a
    (layer 0 of a tied model). Alone, so that training can compute one layer's tensors inside its checkpoint."""

    def D(name: str) -> torch.Tensor:  # a dense tensor in the bases' dtype and device, one at a time
        return dense[f"{prefix}.{name}"].to(Ua.device, Ua.dtype)

    out = {"in_proj": Ua} if in_proj else {}
    for op, basis in (("self_attn.q_proj", Ua), ("self_attn.k_proj", Ua), ("self_attn.v_proj", Ua),
                      ("mlp.gate_proj", Um), ("mlp.up_proj", Um)):
        out[f"{op}.weight"] = D(f"{op}.weight") @ basis
    for op, basis in (("self_attn.o_proj", Um), ("mlp.down_proj", Un)):
        out[f"{op}.weight"] = basis.t() @ D(f"{op}.weight")
        if f"{prefix}.{op}.bias" in dense:
            out[f"{op}.bias"] = D(f"{op}.bias") @ basis
    if not shared:
        out["attn_shortcut"] = Ua.t() @ Um
    out["mlp_shortcut"] = Um.t() @ Un
    return out


def sliced_tensors(model: nn.Module, dense: dict[str, torch.Tensor], bases: list[torch.Tensor],
                   embed_and_head: bool = True, tied_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The sliced model's tensors (module docstring) from the dense ones and the bases [U_a^0, U_m^0, ..., U_a^L],
    differentiable in the bases, in their dtype. Without `embed_and_head` the embedding table and the head
    are left out (training applies U_a^0 and U_a^L to their activations instead: cheaper for a large vocabulary).
    `tied_scale` (tied models: the final norm's scale g) gives `in_proj` and `out_proj` instead of the
    sliced table and head."""
    return {name: t for part in sliced_parts(model, dense, bases, embed_and_head, tied_scale) for name, t in part.items()}


def sliced_parts(model: nn.Module, dense: dict[str, torch.Tensor], bases: list[torch.Tensor],
                 embed_and_head: bool = True, tied_scale: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """sliced_tensors' tensors in parts, each computed when asked for: those outside the decoder layers, then one
    layer's at a time (so that a caller that stores each part holds one layer's products, not the model's)."""
    adapter = get_adapter(model)
    U = bases
    shared = is_shared(model)
    out = {}
    if tied_scale is not None:
        out[adapter.final_norm_path + ".out_proj"] = U[-1].t() * tied_scale.to(U[-1].device, U[-1].dtype)
    elif embed_and_head:
        for path, basis in ((adapter.embedding_paths[0], U[0]), (adapter.head_path, U[-1])):
            out[path + ".weight"] = dense[path + ".weight"].to(basis.device, basis.dtype) @ basis
    yield out
    for i in range(len(adapter.layers())):
        p = adapter.layer_prefix(i)
        layer = sliced_layer_tensors(dense, p, U[2 * i], U[2 * i + 1], U[2 * i + 2], shared,
                                     in_proj=tied_scale is not None and i == 0)
        yield {f"{p}.{name}": t for name, t in layer.items()}


@torch.no_grad()
def load_sliced(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` (by parameter name) into a restructured model, in its dtype."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in tensors.items():
        if params[name].shape != t.shape:
            raise ValueError(f"{name}: expected shape {tuple(params[name].shape)}, got {tuple(t.shape)}")
        params[name].copy_(t.to(params[name].dtype))


@torch.no_grad()
def slice_model(model: nn.Module, bases: list[torch.Tensor], tied_scale: torch.Tensor | None = None,
                shared: bool = False) -> dict:
    """Rotate and slice a rotation-invariant Llama-family model in place (module docstring for the equations).

    `bases` = [U_a^0, U_m^0, U_a^1, U_m^1, ..., U_a^L]: 2L + 1 matrices d × k with orthonormal columns;
    the fusion is computed in float64. `tied_scale`: keep the tied table whole (module docstring; g = the
    final norm's scale before folding; `shared`: U_m^l = U_a^l, no attention shortcut). Returns the
    `prunekit_sliced` description (also on `model.config`)."""
    dense = dense_tensors(model)
    bases = [b.detach().to("cpu", torch.float64) for b in bases]
    info = restructure(model, [b.shape[1] for b in bases], tied=tied_scale is not None, shared=shared)
    load_sliced(model, sliced_tensors(model, dense, bases, tied_scale=tied_scale))
    return info


def tied_scale(model: nn.Module) -> torch.Tensor | None:
    """The final norm's scale g when the head shares the input embedding table (before folding), else None."""
    adapter = get_adapter(model)
    head, table = model.get_submodule(adapter.head_path), model.get_submodule(adapter.embedding_paths[0])
    if head.weight.data_ptr() != table.weight.data_ptr():
        return None
    return model.get_submodule(adapter.final_norm_path).weight.detach().to("cpu", torch.float64).clone()


def is_sliced(model: nn.Module) -> bool:
    return bool(getattr(model, "_prunekit_sliced", False))


def is_shared(model: nn.Module) -> bool:
    """Whether the (restructured) model has one basis per layer, hence no attention shortcuts."""
    return bool(getattr(model.config, "prunekit_sliced", {}).get("shared_layer_basis", False))


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied tensors counted once)."""
    seen = {}
    for p in model.parameters():
        seen[id(p) if p.is_meta else p.data_ptr()] = p.numel()  # a streamed model's layers are on meta
    return sum(seen.values())
