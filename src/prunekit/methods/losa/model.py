"""How LoSA attaches to a model: every decoder linear operator (all seven projections of a Llama
layer) is wrapped in a LosaLinear while training, and unwrapped between stages.

The LoRA factors (A, B) live here across stages, while the wrappers come and go: each stage starts
from plain merged weights that the base pruner can prune, and re-attaching folds the current update
back out of the (newly pruned) weight, so attaching never changes what the model computes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...models.adapters import get_adapter
from .layer import LosaLinear


class LosaAdapters:
    """The LoRA factors of one model, by operator name, and the wrappers currently attached."""

    def __init__(self, model: nn.Module, scaling: float, masked: bool = True):
        self.model, self.scaling, self.masked = model, scaling, masked
        self.adapter = get_adapter(model)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.attached: dict[str, LosaLinear] = {}

    def _operators(self):
        for index, layer in enumerate(self.adapter.layers()):
            for name, _ in self.adapter.linears(layer):
                yield index, layer, name, f"{self.adapter.layer_prefix(index)}.{name}"

    def attach(self, ranks: list[int]) -> None:
        """Wrap every decoder linear with its layer's rank; the mask is the weight's current non-zeros.

        A wrapper reuses the operator's factors from the last stage (resized to the new rank) and takes
        their update out of the merged weight, so the model's output is unchanged by attaching."""
        if self.attached:
            raise RuntimeError("adapters are already attached")
        for index, layer, name, key in self._operators():
            base = layer.get_submodule(name)
            A, B = self.factors.get(key, (None, None))
            wrapper = LosaLinear(base, ranks[index], self.scaling, self.masked, A, B)
            wrapper.unmerge()
            layer.set_submodule(name, wrapper)
            self.attached[key] = wrapper

    def detach(self, merge: bool = True) -> dict:
        """Unwrap every operator, folding its update into the weight if `merge`; keep the factors.

        Returns the check of a masked merge: weights outside the mask that are non-zero after merging
        (must be 0), zeros of the masks, zeros of the merged weights (more only where an update
        happened to cancel a kept weight exactly)."""
        check = {"nonzero_outside_mask": 0, "mask_zeros": 0, "merged_zeros": 0, "weights": 0}
        for index, layer, name, key in self._operators():
            wrapper = self.attached.pop(key, None)
            if wrapper is None:
                continue
            self.factors[key] = (wrapper.lora_A.detach().clone(), wrapper.lora_B.detach().clone())
            base = wrapper.merge() if merge else wrapper.base
            if merge and wrapper.mask is not None:
                W, M = base.weight, wrapper.mask
                check["nonzero_outside_mask"] += int(((W != 0) & ~M).sum())
                check["mask_zeros"] += int((~M).sum())
                check["merged_zeros"] += int((W == 0).sum())
                check["weights"] += W.numel()
            layer.set_submodule(name, base)
        return check

    def parameters(self) -> list[nn.Parameter]:
        return [p for w in self.attached.values() for p in (w.lora_A, w.lora_B)]

    def ranks(self) -> dict[str, int]:
        return {key: w.rank for key, w in self.attached.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The factors as tensors named `<operator>.lora_A` / `.lora_B` (for saving an unmerged adapter)."""
        out = {}
        for key, (A, B) in self.factors.items():
            out[f"{key}.lora_A"], out[f"{key}.lora_B"] = A.cpu().contiguous(), B.cpu().contiguous()
        return out
