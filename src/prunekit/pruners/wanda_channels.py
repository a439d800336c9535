"""Wanda on whole MLP channels: a structured baseline that shrinks the intermediate size.

Channel j of an MLP is row j of its input operators (gate/up, or fc1) and column j of its output
operator (down, or fc2). Its score sums Wanda's |W|·‖X‖ (Sun et al., 2024, eq. 1) over its weights:

    s_j = Σ_i |W_gate[j, i]| ‖X_i‖ + Σ_i |W_up[j, i]| ‖X_i‖ + ‖Z_j‖ Σ_o |W_down[o, j]|

with X the MLP's input and Z the down projection's input on the calibration tokens. Each layer keeps its
round((1 − sparsity)·I) best channels (the same count in every layer, so the result is an ordinary model
with a smaller `intermediate_size`), layer by layer, the statistics of each layer taken on the outputs
of the already-pruned earlier layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..engine import LayerWalk, OperatorResult, PruneResult
from .base import PruneConfig


@dataclass
class WandaChannelsConfig(PruneConfig):
    """`channels` = fraction of MLP channels removed."""

    method = "wanda-channels"
    summary = (
        'structured: remove the `--channels` fraction of MLP channels by summed |W|·‖X‖; a plain smaller '
        'model'
    )
    paper = "Wanda's score, channel-wise"
    removes = "channels"
    channels: float = field(default=0.5, metadata={"help": "fraction of MLP channels removed, in [0, 1)"})

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.channels < 1:
            raise ValueError(f"--channels must lie in [0, 1), got {self.channels}")


def channel_scores(W_in: list[torch.Tensor], x_sq: torch.Tensor, W_out: torch.Tensor,
                   z_sq: torch.Tensor) -> torch.Tensor:
    """s_j (module docstring): W_in are [I, d] input operators, x_sq = Σ X_i² [d], W_out [d, I],
    z_sq = Σ Z_j² [I]."""
    s = sum(W.abs().float() @ x_sq.sqrt() for W in W_in)
    return s + W_out.abs().float().sum(0) * z_sq.sqrt()


def _keep_rows(op: nn.Linear, keep: torch.Tensor) -> None:
    op.weight = nn.Parameter(op.weight.data[keep].contiguous(), requires_grad=False)
    if op.bias is not None:
        op.bias = nn.Parameter(op.bias.data[keep].contiguous(), requires_grad=False)
    op.out_features = int(keep.numel())


def _keep_columns(op: nn.Linear, keep: torch.Tensor) -> None:
    op.weight = nn.Parameter(op.weight.data[:, keep].contiguous(), requires_grad=False)
    op.in_features = int(keep.numel())


@torch.no_grad()
def prune_channels(model, config: WandaChannelsConfig, calib: torch.Tensor, *, device="cpu", batch_size: int = 8,
                   progress: bool = True, **_) -> PruneResult:
    walk = LayerWalk(model, calib, device=device, batch_size=batch_size, progress=progress, desc="wanda-channels")
    adapter, result = walk.adapter, PruneResult()
    size_attr = "ffn_dim" if hasattr(model.config, "ffn_dim") else "intermediate_size"
    total = getattr(model.config, size_attr)
    k = max(1, int(round((1.0 - config.channels) * total)))
    for index, layer, kwargs in walk:
        groups = adapter.linear_groups(layer)
        readers, writer = [op for _, op in groups[2]], groups[3][0][1]
        stats = {}

        def hook(name):
            def fn(module, args):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                stats[name] = stats.get(name, 0) + x.pow(2).sum(0)
            return fn

        handles = [readers[0].register_forward_pre_hook(hook("x")), writer.register_forward_pre_hook(hook("z"))]
        try:
            walk.forward(layer, kwargs)
        finally:
            for h in handles:
                h.remove()
        scores = channel_scores([op.weight for op in readers], stats["x"], writer.weight, stats["z"])
        keep = torch.sort(torch.topk(scores, k).indices).values
        # per operator: sparsity = fraction of its weights removed; the reconstruction error is not measured (0.0)
        for name, op in groups[2]:
            shape = tuple(op.weight.shape)
            _keep_rows(op, keep)
            result.operators.append(OperatorResult(f"{adapter.layer_prefix(index)}.{name}", shape, 1 - k / total,
                                                   0.0, 0.0))
        shape = tuple(writer.weight.shape)
        _keep_columns(writer, keep)
        result.operators.append(OperatorResult(f"{adapter.layer_prefix(index)}.{groups[3][0][0]}", shape,
                                               1 - k / total, 0.0, 0.0))
        walk.forward(layer, kwargs, out=walk.hidden)
    setattr(model.config, size_attr, k)
    result.details["wanda-channels"] = {"channels_before": total, "channels_after": k}
    return result
