"""Per-layer sparsity (`--layer-sparsity`): how a model-wide target is spread over the decoder layers before a
layer-wise pruner runs.

  uniform  every layer at the target;
  owl      layers with more outlier weights are pruned less (Yin et al., 2024; allocation/owl.py);
  rmi      layers whose representation the others share are pruned more (LoSA §2.2; allocation/rmi.py).

The rates always average exactly the target over all pruned weights (allocation/rounding.py).
"""

from __future__ import annotations

import torch

from ..models.adapters import get_adapter
from .owl import outlier_ratios, owl_rates
from .rmi import (feature_positions, layer_features, layer_importance, rmi_delta, rmi_sparsity,
                  similarity_matrix)

#: RMI's representations: 1024 tokens drawn from the first 16 calibration windows (LoSA's defaults)
RMI_TOKENS, RMI_WINDOWS, RMI_SEED = 1024, 16, 0


def layer_sizes(model) -> list[int]:
    """n_l: the weights of the pruned operators of each decoder layer."""
    adapter = get_adapter(model)
    return [sum(op.weight.numel() for _, op in adapter.linears(layer)) for layer in adapter.layers()]


def layer_rates(config, model, calib: torch.Tensor, *, device="cpu", offload="cpu", batch_size: int = 8,
                progress: bool = True) -> tuple[list[float] | None, dict]:
    """(each decoder layer's sparsity, or None for uniform; what report.json should say about it) for the
    config's `layer_sparsity`, measured on the dense `model` with the calibration windows."""
    kind, target, sizes = config.layer_sparsity, config.sparsity, layer_sizes(model)
    if kind == "uniform":
        return None, {}
    if kind == "owl":
        ratios = outlier_ratios(model, calib, config.owl_m, device=device, offload=offload, batch_size=batch_size,
                                progress=progress)
        rates = owl_rates(ratios, sizes, target, config.owl_lambda)
        return rates, {"allocation": "owl", "M": config.owl_m, "lambda": config.owl_lambda,
                       "outlier_ratios": ratios, "rates": rates}
    positions = feature_positions(calib, RMI_WINDOWS, RMI_TOKENS, RMI_SEED)
    features = layer_features(model, calib, positions, device, batch_size, offload)
    importance = layer_importance(similarity_matrix(features))
    rates = rmi_sparsity(importance, sizes, target, rmi_delta(target))
    return rates, {"allocation": "rmi", "delta": rmi_delta(target), "importance": importance.tolist(),
                   "rates": rates}


__all__ = ["layer_rates", "layer_sizes", "outlier_ratios", "owl_rates"]
