"""The rotated model as a differentiable function of Q, computed from the frozen weights of a
rotation-invariant model without writing them (for learning Q; `rotate_model` fuses it afterwards).

    h₀ = embeddings(ids) Q,   W_in' = t(W_in Q),   W_out' = t(Qᵀ W_out),   b' = b Q,
    z  = n(h_L) Qᵀ            (the final norm's output taken back to the original basis)

where t(name, W) is an optional per-operator transform of the rotated weight (RotPruner: the base
pruner's mask with a straight-through gradient). The LM head is applied to z in the original basis,
which equals the rotated head (head Q) applied to n(h_L): it saves rotating a vocab × d matrix
every step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from .invariant import ResidualStream, is_rotation_invariant

Transform = Callable[[str, torch.Tensor], torch.Tensor]


class RotatedForward:
    """Call with (input_ids, Q[, transform]) → z [batch, tokens, d], the final hidden state in the
    original basis; `logits(z)` applies the frozen head."""

    def __init__(self, model: nn.Module, stream: ResidualStream, backbone: nn.Module):
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

    def _local(self, name: str) -> str:
        return name[len(self.prefix):] if name.startswith(self.prefix) else name

    def rotated_weights(self, Q: torch.Tensor, transform: Transform | None = None) -> dict[str, torch.Tensor]:
        """{parameter name relative to the backbone: rotated (and transformed) tensor}, rotated in Q's dtype and
        handed to the forward pass in the model's own (a bfloat16 model computes in bfloat16)."""
        out = {}
        for path, W in self.readers.items():
            Wr = W.to(Q.dtype) @ Q
            out[self._local(path + ".weight")] = (transform(path, Wr) if transform else Wr).to(W.dtype)
        for path, W in self.writers.items():
            Wr = Q.t() @ W.to(Q.dtype)
            out[self._local(path + ".weight")] = (transform(path, Wr) if transform else Wr).to(W.dtype)
        for name, b in self.rows.items():
            out[self._local(name)] = (b.to(Q.dtype) @ Q).to(b.dtype)
        return out

    def __call__(self, input_ids: torch.Tensor, Q: torch.Tensor, transform: Transform | None = None) -> torch.Tensor:
        overrides = self.rotated_weights(Q, transform)
        handles = [m.register_forward_hook(lambda mod, args, out: out @ Q.to(out.dtype)) for m in self.embeddings]
        try:
            out = functional_call(self.backbone, overrides, args=(), kwargs={"input_ids": input_ids, "use_cache": False},
                                  strict=False)
        finally:
            for h in handles:
                h.remove()
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return hidden @ Q.t().to(hidden.dtype)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z.to(self.head.weight.dtype))
