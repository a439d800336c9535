"""The rotated model as a differentiable function of Q, computed from the frozen weights of a
rotation-invariant model without writing them (for learning Q; `rotate_model` fuses it afterwards).

    h₀ = embeddings(ids) Q,   W_in' = t(W_in Q),   W_out' = t(Qᵀ W_out),   b' = b Q,
    z  = n(h_L) Qᵀ            (the final norm's output taken back to the original basis)

where t(name, W) is an optional per-operator transform of the rotated weight (RotPruner: the base
pruner's mask with a straight-through gradient). The LM head is applied to z in the original basis,
which equals the rotated head (head Q) applied to n(h_L): it saves rotating a vocab × d matrix
every step.

With residual rotations (rotation/residual.py) the operators of a rotated block b rotate by R_b = Q A_g
instead of Q (W_in R_b, R_bᵀ W_out, b R_b) and the block computes with the products n(h) A_g and o_b A_gᵀ
(`residual.block_products`, the rule the installed model uses), A_g differentiable as Q is.

With `checkpoint_layers`, each decoder layer is recomputed in the backward pass and rotates its own weights
there (models/recompute.py): the backward pass keeps only each layer's input instead of every layer's rotated
fp32 weights at once (≈ 0.9 GB a layer at 8B widths). Same arithmetic, same result.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from ..models.adapters import get_adapter
from ..models.recompute import recomputed_layers
from . import residual
from .invariant import ResidualStream, is_rotation_invariant

Transform = Callable[[str, torch.Tensor], torch.Tensor]


class RotatedForward:
    """Call with (input_ids, Q[, transform[, A]]) → z [batch, tokens, d], the final hidden state in the
    original basis; `logits(z)` applies the frozen head. `blocks` (residual.blocks) are the blocks that
    rotate by their own A[g] on top of Q; A maps each of their groups to its matrix."""

    def __init__(self, model: nn.Module, stream: ResidualStream, backbone: nn.Module,
                 checkpoint_layers: bool = False, blocks: list[residual.Block] | None = None):
        if not is_rotation_invariant(model):
            raise ValueError("RotatedForward needs a rotation-invariant model: call make_rotation_invariant first")
        self.model, self.stream, self.backbone = model, stream, backbone
        names = {id(m): name for name, m in model.named_modules()}
        self.prefix = names[id(backbone)] + "." if names[id(backbone)] else ""
        modules, params = dict(model.named_modules()), dict(model.named_parameters())
        self.embeddings = [modules[p] for p in stream.embeddings]
        self.readers = {p: modules[p].weight for p in stream.readers}
        self.writers = {p: modules[p].weight for p in stream.writers}
        self.rows = {p: params[p] for p in stream.row_params}
        self.head = modules[stream.head]
        self.checkpoint_layers = checkpoint_layers
        self.blocks = list(blocks or ())
        self.group_of = {path: b.group for b in self.blocks for path in (*b.readers, b.writer, b.writer + ".bias")}
        adapter = get_adapter(model)
        self.layers = {adapter.layer_prefix(i) + ".": layer for i, layer in enumerate(adapter.layers())}

    def _local(self, name: str) -> str:
        return name[len(self.prefix):] if name.startswith(self.prefix) else name

    def rotated_weights(self, Q: torch.Tensor, transform: Transform | None = None,
                        root: str | None = None, QA: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{parameter name: rotated (and transformed) tensor}, rotated in Q's dtype and handed to the forward pass
        in the model's own (a bfloat16 model computes in bfloat16). Names are relative to the backbone; with
        `root` (a decoder layer's prefix) only that layer's parameters, named relative to it. `QA` {g: Q A_g}:
        the rotation of the operators of each rotated block's group g."""
        out = {}
        QA = QA or {}

        def R(name: str) -> torch.Tensor:
            g = self.group_of.get(name)
            return Q if g is None else QA[g]

        def put(name: str, tensor: torch.Tensor) -> None:
            if root is None:
                out[self._local(name)] = tensor
            else:
                out[name[len(root):]] = tensor

        def wanted(name: str) -> bool:
            return root is None or name.startswith(root)

        for path, W in self.readers.items():
            if wanted(path):
                Wr = W.to(Q.dtype) @ R(path)
                put(path + ".weight", (transform(path, Wr) if transform else Wr).to(W.dtype))
        for path, W in self.writers.items():
            if wanted(path):
                Wr = R(path).t() @ W.to(Q.dtype)
                put(path + ".weight", (transform(path, Wr) if transform else Wr).to(W.dtype))
        for name, b in self.rows.items():
            if wanted(name):
                put(name, (b.to(Q.dtype) @ R(name)).to(b.dtype))
        return out

    def _outside_layers(self, Q: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rotated parameters that belong to no decoder layer (a final LayerNorm's bias)."""
        return {self._local(name): (b.to(Q.dtype) @ Q).to(b.dtype) for name, b in self.rows.items()
                if not name.startswith(tuple(self.layers))}

    def _recomputed(self, Q: torch.Tensor, transform: Transform | None, A: dict, QA: dict):
        """Each decoder layer recomputed in backward with its own rotated weights (models/recompute.py); the block
        products are hooked inside each layer's checkpoint, so that the recomputation has them too."""
        roots, layers = list(self.layers), list(self.layers.values())
        blocks = [[b for b in self.blocks if b.norm.startswith(root)] for root in roots]
        return recomputed_layers(layers, lambda l: self.rotated_weights(Q, transform, roots[l], QA),
                                 around=lambda l: residual.block_products(self.model, blocks[l], A))

    def __call__(self, input_ids: torch.Tensor, Q: torch.Tensor, transform: Transform | None = None,
                 A: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        A = A or {}
        QA = {g: Q @ Ag.to(Q.dtype) for g, Ag in A.items()}
        if self.checkpoint_layers:
            overrides, layers = self._outside_layers(Q), self._recomputed(Q, transform, A, QA)
            products = residual.block_products(self.model, [], A)
        else:
            overrides, layers = self.rotated_weights(Q, transform, QA=QA), nullcontext()
            products = residual.block_products(self.model, self.blocks, A)
        handles = [m.register_forward_hook(lambda mod, args, out: out @ Q.to(out.dtype)) for m in self.embeddings]
        try:
            with products, layers:
                out = functional_call(self.backbone, overrides, args=(),
                                      kwargs={"input_ids": input_ids, "use_cache": False}, strict=False)
        finally:
            for h in handles:
                h.remove()
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return hidden @ Q.t().to(hidden.dtype)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z.to(self.head.weight.dtype))
