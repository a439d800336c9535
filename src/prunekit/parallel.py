"""`--parallel-layers`: decoder layers pruned on several processes with torch.distributed.

With error correction `intra` or `none`, the pruning of a decoder layer reads only dense
activations, so layers are independent. Launched under `torchrun --nproc_per_node K`, rank r prunes
layers r, r + K, r + 2K, ... (every rank runs the cheap dense forward up to its last layer to get
their inputs), then every layer's pruned weights are broadcast from the rank that pruned it, so all
ranks end with the same model; rank 0 alone evaluates and saves (see cli.py). Backend: nccl when
pruning on CUDA, gloo on CPU. Without torchrun (no WORLD_SIZE in the environment) it is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init(device: str) -> str:
    """Join the torchrun process group (once); returns the device this rank should use: with CUDA,
    the GPU of its LOCAL_RANK."""
    if world_size() == 1:
        return device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def is_follower(config) -> bool:
    """True on ranks other than 0 of a --parallel-layers run: they prune their share, then exit."""
    return bool(getattr(config, "parallel_layers", False)) and world_size() > 1 and rank() > 0


@dataclass
class Layers:
    """Which decoder layers this process prunes."""

    rank: int
    world: int
    n_layers: int

    @classmethod
    def start(cls, config, device, n_layers: int) -> "Layers":
        if not getattr(config, "parallel_layers", False) or world_size() == 1:
            return cls(0, 1, n_layers)
        init(str(device))
        return cls(dist.get_rank(), dist.get_world_size(), n_layers)

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def owner(self, index: int) -> int:
        return index % self.world

    def last_layer(self) -> int:
        """The last layer this rank prunes: the dense forward need not go further."""
        mine = [i for i in range(self.n_layers) if self.owns(i)]
        return mine[-1] if mine else -1

    def gather(self, layers, adapter, result, device) -> None:
        """Broadcast every pruned weight from its owner; collect all ranks' operator results in layer order."""
        if self.world == 1:
            return
        transport = device if str(device).startswith("cuda") else "cpu"  # nccl moves CUDA tensors only
        for index in range(self.n_layers):
            for _, op in adapter.linears(layers[index]):
                buffer = op.weight.data.to(transport).contiguous()
                dist.broadcast(buffer, src=self.owner(index))
                op.weight.data.copy_(buffer.to(op.weight.device))
        shares = [None] * self.world
        dist.all_gather_object(shares, (result.operators, result.timings))
        order = {adapter.layer_prefix(i): i for i in range(self.n_layers)}
        result.operators = sorted((op for ops, _ in shares for op in ops), key=lambda op: _layer_of(op.name, order))
        # wall time of the slowest rank is what a user waits for
        for key in result.timings:
            result.timings[key] = max(timings[key] for _, timings in shares)


def _layer_of(name: str, order: dict[str, int]) -> int:
    for prefix, index in order.items():
        if name.startswith(prefix + "."):
            return index
    raise KeyError(name)
