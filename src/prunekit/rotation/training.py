"""What learning a rotation or a basis shares (RotPruner, RotPruner-structured): the distillation loss against the
dense model, the learning-rate schedule, the order of training windows and the training log."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..resources import peak_bytes


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class TrainingLog:
    steps: int = 0
    tokens_per_step: int = 0
    step_seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    max_orthonormality_error: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    teacher_seconds: float = 0.0
    grad_norm_first: float = 0.0  # ‖∂loss/∂R‖ at the first step (Euclidean), for choosing the learning rate

    def record_step(self, step: int, started: float, loss: torch.Tensor, kl: float, mse: float, device,
                    orthonormality: Callable[[], float]) -> None:
        """One optimizer step's time (since `started`, the device synchronised), losses, and, every 10 steps
        and at the last, the largest orthonormality error so far (`orthonormality()` computes it now)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.step_seconds.append(time.perf_counter() - started)
        self.loss.append(float(loss.detach()))
        self.kl.append(kl)
        self.mse.append(mse)
        if step % 10 == 0 or step == self.steps - 1:
            self.max_orthonormality_error = max(self.max_orthonormality_error, orthonormality())

    def record_peak_memory(self, device) -> None:
        """Peak CUDA memory since the stats were reset, or on the CPU the process's peak RSS."""
        self.peak_memory_bytes = peak_bytes(device)
        self.peak_memory_kind = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"

    def summary(self) -> dict:
        steady = self.step_seconds[1:] or self.step_seconds  # the first step includes warm-up
        k = max(1, min(20, len(self.loss) // 5))
        return {
            "steps": self.steps, "tokens_per_step": self.tokens_per_step,
            "seconds_per_step": sum(steady) / len(steady) if steady else 0.0,
            "train_seconds": sum(self.step_seconds), "teacher_seconds": self.teacher_seconds,
            "loss_first": mean(self.loss[:k]), "loss_last": mean(self.loss[-k:]),
            "kl_first": mean(self.kl[:k]), "kl_last": mean(self.kl[-k:]),
            "mse_first": mean(self.mse[:k]), "mse_last": mean(self.mse[-k:]),
            "max_orthonormality_error": self.max_orthonormality_error, "grad_norm_first": self.grad_norm_first,
            "loss": list(self.loss),  # per step: layers.png draws it
            "peak_memory_bytes": self.peak_memory_bytes, "peak_memory_kind": self.peak_memory_kind,
        }


def _cosine(total: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def lr_schedule(optimizer, schedule: str, steps: int):
    """`cosine` (to 0 over `steps`) or `constant` learning rate, as a LambdaLR on `optimizer`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps) if schedule == "cosine" else (lambda step: 1.0))


def window_batches(n: int, batch: int, seed: int):
    """Endless batches of `batch` window indices out of `n`: seeded random permutations, one after another."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while True:
        while len(order) < batch:
            order += torch.randperm(n, generator=generator).tolist()
        yield order[:batch]
        order = order[batch:]


def distillation_loss(view, z: torch.Tensor, z_dense: torch.Tensor, config):
    """(loss, kl, mse): kl_weight · KL(p_dense ‖ p) per token + mse_weight · ‖z − z_dense‖² / ‖z_dense‖², for final
    hidden states z in the original basis; `view.logits(z)` gives the next-token logits."""
    loss = z.new_zeros(())
    kl = mse = float("nan")
    if config.kl_weight:
        logp = F.log_softmax(view.logits(z).float().flatten(0, 1), dim=-1)
        with torch.no_grad():
            logp_dense = F.log_softmax(view.logits(z_dense).float().flatten(0, 1), dim=-1)
        kl_t = F.kl_div(logp, logp_dense, log_target=True, reduction="sum") / logp.shape[0]
        loss = loss + config.kl_weight * kl_t
        kl = float(kl_t.detach())
    if config.mse_weight:
        mse_t = (z - z_dense).pow(2).sum() / z_dense.pow(2).sum()
        loss = loss + config.mse_weight * mse_t
        mse = float(mse_t.detach())
    return loss, kl, mse
