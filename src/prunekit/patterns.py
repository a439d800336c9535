"""Sparsity patterns and the masks that realise them.

A mask is a bool tensor shaped like the weight (out × in), True where the weight is kept.
Every mask is chosen by exact count (top-k on a score), never by a threshold, so ties cannot
change the achieved sparsity.

Mixed N:M (`mixed-N:M`, as in OWL and LoSA) keeps M and gives every decoder layer its own N_l:M, the N_l
averaging N over all pruned weights; prunekit.allocation picks them, and each layer is then pruned with the
plain N_l:M pattern (`Pattern.of_layer`), so every pruner serves it unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Pattern:
    """`unstructured` (n = m = 0), N:M: at most N non-zeros in every M consecutive input weights, or mixed N:M
    (`mixed`): each decoder layer N_l:M, averaging N:M."""

    n: int = 0
    m: int = 0
    mixed: bool = False

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        text = str(text).strip().lower()
        if text == "unstructured":
            return cls()
        match = re.fullmatch(r"(mixed-)?(-?\d+):(-?\d+)", text)
        if not match:
            raise UsageError(f"unknown pattern {text!r}: use 'unstructured', N:M such as 2:4 or 4:8, or mixed-N:M "
                             f"such as mixed-2:4")
        mixed, n, m = bool(match[1]), int(match[2]), int(match[3])
        if m <= 0:
            raise UsageError(f"pattern {text}: M must be a positive integer")
        if not 0 < n <= m:
            raise UsageError(f"pattern {text}: N must satisfy 0 < N <= M (N non-zeros kept out of every M)")
        if mixed and n == m:
            raise UsageError(f"pattern {text}: a mixed pattern needs N < M (every layer keeps 1 to M-1 of each M)")
        if mixed and not 1 < n < m - 1:  # N_l in [1, M-1] averaging 1 or M-1 leaves no choice
            raise UsageError(f"pattern {text}: averaging {n}:{m} with 1 to {m - 1} kept of every {m} gives every layer "
                             f"{n}:{m}: use --pattern {n}:{m}, or a mixed N:M with 1 < N < M-1 such as mixed-2:4")
        return cls(n, m, mixed)

    def sparsity(self, target: float) -> float:
        """The sparsity this pattern achieves: 1 - N/M for N:M (on average for mixed N:M), else the target."""
        return 1.0 - self.n / self.m if self.is_nm else float(target)

    @property
    def step(self) -> float:
        """One step of N, 1/M: a mixed pattern's allocation band (any narrower one rounds every layer to N)."""
        return 1.0 / self.m

    def layer_sparsity(self, n: int) -> float:
        """1 − n/M: the sparsity of a layer of this (mixed) pattern that keeps n of every M (`of_layer`'s inverse)."""
        return 1.0 - n / self.m

    def of_layer(self, sparsity: float) -> "Pattern":
        """The plain N_l:M of one layer of this mixed pattern, from its sparsity 1 - N_l/M."""
        n = round(self.m * (1.0 - sparsity))
        if not self.mixed or abs(self.m * (1.0 - sparsity) - n) > 1e-6 or not 0 < n <= self.m:
            raise UsageError(f"layer sparsity {sparsity} is not a layer of {self}: it must be 1 - N/{self.m} "
                             f"with 0 < N <= {self.m}")
        return Pattern(n, self.m)

    def __str__(self) -> str:
        if not self.is_nm:
            return "unstructured"
        return f"{'mixed-' if self.mixed else ''}{self.n}:{self.m}"


def check_sparsity(value: float) -> float:
    """Sparsity must lie in [0, 1): 1 would delete the whole operator."""
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise UsageError(f"sparsity {value} is outside [0, 1): pass a fraction such as 0.5")
    return value


def keep_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest scores of each row; floor(in · sparsity) weights are pruned per row (Wanda's group)."""
    n_prune = int(scores.shape[1] * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_prune:
        idx = torch.topk(scores, n_prune, dim=1, largest=False).indices
        mask.scatter_(1, idx, False)
    return mask


def keep_in_matrix(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest scores over the whole tensor; floor(numel · sparsity) weights are pruned."""
    n_prune = int(scores.numel() * sparsity)
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune:
        idx = torch.topk(scores.flatten(), n_prune, largest=False).indices
        mask[idx] = False
    return mask.view_as(scores)


def check_widths(pattern: Pattern, widths: dict[str, int]) -> None:
    """N:M needs every operator's input width ({name: in_features}) to be a multiple of M."""
    if not pattern.is_nm:
        return
    for name, cols in widths.items():
        if cols % pattern.m:
            raise UsageError(f"{name} has {cols} inputs, not a multiple of M={pattern.m}: choose another N:M pattern")


def keep_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores in every group of M consecutive input columns."""
    rows, cols = scores.shape
    check_widths(Pattern(n, m), {"an operator": cols})
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=2).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True)
    return mask.view(rows, cols)


def select_mask(scores: torch.Tensor, pattern: Pattern, sparsity: float, group: str = "row") -> torch.Tensor:
    """The keep-mask of `pattern` on `scores`; for unstructured, `group` is 'row' or 'matrix'."""
    if pattern.is_nm:
        return keep_n_of_m(scores, pattern.n, pattern.m)
    if group == "row":
        return keep_per_row(scores, sparsity)
    return keep_in_matrix(scores, sparsity)


def max_nonzeros_per_group(weight: torch.Tensor, m: int) -> int:
    """The largest number of non-zeros in any group of M consecutive inputs (≤ N for a valid N:M weight)."""
    rows, cols = weight.shape
    return int((weight.reshape(rows, cols // m, m) != 0).sum(dim=2).max())
