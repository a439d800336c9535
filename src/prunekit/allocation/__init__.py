"""Per-layer sparsity (`--layer-sparsity`): how a model-wide target is spread over the decoder layers before a
layer-wise pruner runs.

  uniform  every layer at the target;
  owl      layers with more outlier weights are pruned less (Yin et al., 2024; allocation/owl.py);
  rmi      layers whose representation the others share are pruned more (LoSA §2.2; allocation/rmi.py);
  sensitivity  each layer pruned alone at the target and one step either side, the calibration loss measured,
           and the steps with the least summed loss chosen (SPDY's additive model; allocation/sensitivity.py);
  sensitivity-blocks  the same per residual block: each layer's attention and MLP get their own rates.

The rates always average exactly the target over all pruned weights (allocation/rounding.py).

Mixed N:M (`--pattern mixed-N:M`): the same allocations with a half-width of one step of N, 1/M (RMI's δ; OWL's λ
unless set), then each layer's rate is rounded to a whole N_l — N − 1, N or N + 1 with that band — so that the
N_l:M average exactly N:M (allocation/rounding.py `mixed_n`). A narrower band would round every layer to N.
"""

from __future__ import annotations

import torch

from ..models.adapters import get_adapter
from .owl import outlier_ratios, owl_rates
from .rmi import (feature_positions, layer_features, layer_importance, rmi_delta, rmi_sparsity,
                  similarity_matrix)
from .rounding import mixed_n
from .sensitivity import sensitivity_rates, unit_groups

#: RMI's representations: 1024 tokens drawn from the first 16 calibration windows (LoSA's defaults)
RMI_TOKENS, RMI_WINDOWS, RMI_SEED = 1024, 16, 0


def layer_sizes(model) -> list[int]:
    """n_l: the weights of the pruned operators of each decoder layer."""
    adapter = get_adapter(model)
    return [sum(op.weight.numel() for _, op in adapter.linears(layer)) for layer in adapter.layers()]


def block_sizes(model) -> list[int]:
    """The weights of the pruned operators of each residual block (attention, MLP), layer after layer."""
    adapter = get_adapter(model)
    sizes = []
    for layer in adapter.layers():
        groups = adapter.linear_groups(layer)
        sizes += [sum(op.weight.numel() for g in unit for _, op in groups[g])
                  for unit in unit_groups(adapter, groups, blocks=True)]
    return sizes


def layer_rates(config, model, calib: torch.Tensor, *, device="cpu", offload="cpu", batch_size: int = 8,
                progress: bool = True) -> tuple[list[float] | None, dict]:
    """(each decoder layer's sparsity, or None for uniform; what report.json should say about it) for the
    config's `layer_sparsity`, measured on the dense `model` with the calibration windows. For a mixed N:M
    pattern each rate is 1 − N_l/M."""
    kind, target, sizes, pattern = config.layer_sparsity, config.sparsity, layer_sizes(model), config.pattern
    if kind == "uniform":
        return None, {}
    if kind == "owl":
        ratios = outlier_ratios(model, calib, config.owl_m, device=device, offload=offload, batch_size=batch_size,
                                progress=progress)
        rates = owl_rates(ratios, sizes, target, config.owl_lambda)
        report = {"allocation": "owl", "M": config.owl_m, "lambda": config.owl_lambda, "outlier_ratios": ratios,
                  "rates": rates}
    elif kind in ("sensitivity", "sensitivity-blocks"):  # its own rounding: whole steps of N, or whole weights ± λ
        step = pattern.step if pattern.mixed else config.owl_lambda
        blocks = kind == "sensitivity-blocks"
        return sensitivity_rates(model, calib, pattern, target, step, block_sizes(model) if blocks else sizes,
                                 blocks=blocks, device=device, offload=offload, batch_size=batch_size,
                                 progress=progress)
    else:
        delta = pattern.step if pattern.mixed else rmi_delta(target)
        positions = feature_positions(calib, RMI_WINDOWS, RMI_TOKENS, RMI_SEED)
        features = layer_features(model, calib, positions, device, batch_size, offload)
        importance = layer_importance(similarity_matrix(features))
        rates = rmi_sparsity(importance, sizes, target, delta)
        report = {"allocation": "rmi", "delta": delta, "importance": importance.tolist(), "rates": rates}
    if pattern.mixed:
        rates, report["mixed"] = mixed_rates(rates, sizes, pattern)
        report["rates"] = rates
    return rates, report


def group_configs(config, rate, adapter, groups) -> list:
    """The config that prunes each group of operators (those sharing an input) of one decoder layer: `config`
    itself (rate None: uniform), the layer's `rate`, or, where the allocation gave one rate per residual block
    (`rate` a sequence: attention, MLP), the rate of the group's block (adapter.block_of)."""
    if rate is None:
        return [config] * len(groups)
    if isinstance(rate, (list, tuple)):
        return [config.at_layer(rate[adapter.block_of(group[0][0])]) for group in groups]
    return [config.at_layer(rate)] * len(groups)


def mixed_rates(rates: list[float], sizes: list[int], pattern) -> tuple[list[float], dict]:
    """A mixed N:M pattern's layer rates 1 − N_l/M from an allocation's continuous `rates`, and report.json's
    record of them (each layer's N, the rates before rounding)."""
    N = mixed_n(rates, sizes, pattern.n, pattern.m)
    return rates_of_n(N, pattern), {"pattern": str(pattern), "N": N, "continuous_rates": list(rates)}


def rates_of_n(N: list[int], pattern) -> list[float]:
    """The layer rates 1 − N_l/M of a mixed N:M pattern whose layers keep N_l of every M."""
    return [pattern.layer_sparsity(n) for n in N]


__all__ = ["layer_rates", "layer_sizes", "mixed_n", "mixed_rates", "outlier_ratios", "owl_rates", "rates_of_n"]
