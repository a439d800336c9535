"""The pruner interface: one small class per method.

One Pruner instance serves a group of operators that read the same input (q/k/v; gate/up): the
engine feeds the group's calibration inputs to `add_batch` once, then calls `prune` with each
operator's dense weight; `prune` returns the pruned weight (zeros in place) and its keep-mask, and leaves
the statistics untouched. A method is a config dataclass (what the user sets, validated at construction)
plus its Pruner.

What other methods reuse, so that they never re-implement a pruner's rule:
  `mask(W)`            the pruner's selection alone (no reconstruction): RotPruner learns its rotation
                       against it; the default runs `prune` and keeps its mask;
  `load_gram(G)`       statistics from the Gram matrix G = Σ xᵀx of the inputs instead of `add_batch`;
  `load_rotated_gram(G, Q)`  the statistics of inputs rotated by Q (x → x Q, so G → Qᵀ G Q).
A pruner whose rule is a score per weight subclasses `ScorePruner` and writes `scores` only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch

from ..models.adapters import operator_regexes
from ..patterns import Pattern, check_sparsity, select_mask

UNSTRUCTURED_DEFAULT = 0.5
#: --layer-sparsity: how the target is spread over the decoder layers (prunekit.allocation)
ALLOCATIONS = ("uniform", "owl", "rmi", "sensitivity", "sensitivity-blocks")
#: the allocations that give each layer one rate (what a mixed N:M pattern needs), as messages name them
SCORED_ALLOCATIONS = ", ".join(ALLOCATIONS[1:3]) + " or " + ALLOCATIONS[3]
#: OWL's λ (the paper's); a mixed N:M pattern that leaves it here gets one step of N instead (1/M)
OWL_LAMBDA = 0.08


@dataclass
class PruneConfig:
    """Target sparsity and pattern shared by every pruner. `pattern` is 'unstructured', 'N:M' or 'mixed-N:M'.

    `sparsity` is the fraction of zeros; left as None it is 0.5 (unstructured) or the pattern's 1 − N/M.
    Every numeric field of every config is checked here: finite, and within the field's `min` / `above`
    (metadata), so a bad value fails at construction, before any model is loaded."""

    sparsity: float | None = None
    pattern: Pattern | str = "unstructured"
    method: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what it does, in one line (README's method table is made of these)
    paper: ClassVar[str] = ""  # where it comes from ("—" for a folk baseline)
    needs_calibration: ClassVar[bool] = True
    #: LoSA can drive it: prune_layerwise with its own per-layer rates, handing out each pruned layer's outputs
    per_layer_sparsity: ClassVar[bool] = True
    #: the pruner fits W* X* to the dense W X: it runs on prunekit.correction's paired dense/pruned loop
    paired_inputs: ClassVar[bool] = False
    #: it can give each decoder layer its own N_l:M (`--pattern mixed-N:M`)
    mixed_nm: ClassVar[bool] = False
    #: a structured method names the field that says what it removes ("slicing": hidden width, "channels":
    #: MLP channels); its `sparsity` is then 0.0: it leaves no zeros
    removes: ClassVar[str | None] = None

    def __post_init__(self):
        self.pattern = self.pattern if isinstance(self.pattern, Pattern) else Pattern.parse(self.pattern)
        if self.removes is not None:
            if self.sparsity not in (None, 0.0):  # 0.0: what __post_init__ set (dataclasses.replace passes it back)
                raise ValueError(f"--method {self.method} removes whole dimensions, it does not zero weights: use "
                                 f"--{self.removes}, not --sparsity")
            if self.pattern.is_nm:
                raise ValueError(f"--method {self.method} removes whole dimensions: use --{self.removes}, not "
                                 f"--pattern {self.pattern}")
            self.sparsity = 0.0
        if self.pattern.mixed and not self.mixed_nm:
            raise ValueError(f"--method {self.method} prunes every layer alike: --pattern {self.pattern} needs a "
                             f"layer-wise pruner (--method wanda, sparsegpt, magnitude, ria, fista) or losa")
        if self.pattern.is_nm:
            implied = self.pattern.sparsity(0.0)
            if self.sparsity is not None and abs(float(self.sparsity) - implied) > 1e-9:
                raise ValueError(f"--pattern {self.pattern} prunes {implied:.4g} of the weights, not --sparsity "
                                 f"{self.sparsity}: drop --sparsity (or choose an N:M with that fraction)")
            self.sparsity = implied
        elif self.sparsity is None:
            self.sparsity = UNSTRUCTURED_DEFAULT
        self.sparsity = check_sparsity(self.sparsity)
        check_numbers(self)

    def at_layer(self, sparsity: float) -> "PruneConfig":
        """This config for one decoder layer at `sparsity`, a per-layer allocation's rate."""
        return dataclasses.replace(self, sparsity=sparsity)

    def make_pruner(self, in_features: int, device: torch.device) -> "Pruner":
        """The Pruner of one group of operators with `in_features` inputs (per-operator pruners only)."""
        raise NotImplementedError(f"{self.method} is a whole-model method: run it with prunekit.prune")

    def check_model(self, model) -> None:
        """A UsageError, before any work, for a model this method cannot serve (default: any it can load)."""


@dataclass
class LayerwiseConfig(PruneConfig):
    """A per-operator pruner's config: the pruner runs layer by layer (prunekit.layerwise), each decoder layer at
    the sparsity its `layer_sparsity` allocation gives (prunekit.allocation), averaging `sparsity`; with a mixed
    N:M pattern, at the N_l:M the allocation gives."""

    mixed_nm = True
    layer_sparsity: str = field(default="uniform", metadata={
        "help": "per-layer sparsity: uniform, owl (layers with more outlier weights pruned less), rmi (layers "
                "whose representation the others share pruned more, LoSA's rule) or sensitivity (each layer pruned "
                "alone one step either side of the target, the steps with the least calibration loss kept) or "
                "sensitivity-blocks (the same for each layer's attention and MLP on their own; unstructured only)"})
    owl_m: float = field(default=5.0, metadata={
        "help": "OWL: a weight is an outlier when |W_ij|·‖X_j‖ exceeds M × its layer's mean", "above": 0.0})
    owl_lambda: float = field(default=OWL_LAMBDA, metadata={
        "help": "OWL: every layer's sparsity stays within the target ± λ (for --pattern mixed-N:M the default is one "
                "step of N, 1/M); sensitivity, unstructured: the step either side of the target (mixed N:M: one N)",
        "min": 0.0})
    parallel_layers: bool = field(default=False, metadata={
        "flag": "--parallel-layers",
        "help": "every decoder layer pruned from the dense model's inputs, so that layers are independent: under "
                "torchrun each rank prunes a share of them (one process gives the same model); fista: error "
                "correction intra or none"})
    # which operators are pruned: the rule is prunekit.models.adapters.prunes
    targets: tuple[str, ...] = field(default=(), metadata={"repeat": True, "help": (
        "prune only the operators whose model-relative name (model.layers.3.mlp.down_proj) fully matches one of "
        "these regexes (repeatable or comma-separated; llm-compressor's re: prefix accepted; default: every linear "
        "operator of the decoder layers)")})
    ignore: tuple[str, ...] = field(default=(), metadata={"repeat": True, "help": (
        "leave dense the operators whose name fully matches one of these regexes, e.g. '.*mlp.down_proj' "
        "(repeatable or comma-separated; listed in report.json)")})

    def __post_init__(self):
        super().__post_init__()
        self.targets = operator_regexes(self.targets, "--targets")
        self.ignore = operator_regexes(self.ignore, "--ignore")
        if self.layer_sparsity not in ALLOCATIONS:
            raise ValueError(f"unknown --layer-sparsity {self.layer_sparsity!r}: choose one of {', '.join(ALLOCATIONS)}")
        if self.layer_sparsity != "uniform" and self.pattern.is_nm and not self.pattern.mixed:
            raise ValueError(f"--layer-sparsity {self.layer_sparsity} gives each layer its own fraction of zeros: "
                             f"use --pattern unstructured or mixed-{self.pattern}, not {self.pattern}")
        if self.layer_sparsity != "uniform" and (self.targets or self.ignore):
            raise ValueError(f"--layer-sparsity {self.layer_sparsity} spreads the target over every operator of each "
                             "layer: it cannot be combined with --targets/--ignore yet (use --layer-sparsity uniform)")
        if self.pattern.mixed:
            if self.layer_sparsity == "sensitivity-blocks":
                raise ValueError(f"--pattern {self.pattern} prunes each layer at one N:M: use --layer-sparsity "
                                 f"sensitivity (one rate per layer), not sensitivity-blocks")
            if self.layer_sparsity == "uniform":
                raise ValueError(f"--pattern {self.pattern} takes each layer's N from layer scores: add "
                                 f"--layer-sparsity {SCORED_ALLOCATIONS}")
            if self.owl_lambda == OWL_LAMBDA:  # N moves in steps of 1/M: the default λ is one step
                self.owl_lambda = self.pattern.step

    def at_layer(self, sparsity: float) -> "LayerwiseConfig":
        """A mixed N:M pattern's layer at `sparsity` = 1 − N_l/M is pruned with the plain N_l:M."""
        if self.pattern.mixed:  # the allocation is done: the layer's config is a plain, uniform one
            return dataclasses.replace(self, pattern=self.pattern.of_layer(sparsity), sparsity=None,
                                       layer_sparsity="uniform")
        return super().at_layer(sparsity)


class Pruned(NamedTuple):
    """What `Pruner.prune` returns: the pruned weight (+0.0 where pruned) and its keep-mask (True = kept)."""

    weight: torch.Tensor
    mask: torch.Tensor


class Pruner:
    """Statistics of one operator's inputs, and the rule that prunes its weight from them."""

    #: False for a rule that reads only the weights (magnitude): no statistics are collected for it
    uses_inputs: ClassVar[bool] = True
    #: what the last `prune` call wants logged for its operator in report.json (None: nothing)
    extra: dict | None = None

    def __init__(self, config: PruneConfig, in_features: int, device: torch.device):
        self.config = config
        self.in_features = in_features
        self.device = device

    def add_batch(self, x: torch.Tensor) -> None:
        """Accumulate statistics of a batch of inputs x [tokens, in] (in fp32)."""

    def load_gram(self, G: torch.Tensor) -> None:
        """Take the statistics from G = Σ xᵀx [in, in] over the calibration inputs."""
        raise NotImplementedError(f"{type(self).__name__} cannot take its statistics from a Gram matrix")

    def load_rotated_gram(self, G: torch.Tensor, Q: torch.Tensor) -> None:
        """The statistics of the inputs x Q: G → Qᵀ G Q."""
        self.load_gram(Q.t() @ G @ Q)

    def prune(self, weight: torch.Tensor) -> Pruned:
        """The pruned weight (out × in, fp32) for the dense `weight`, and its mask."""
        raise NotImplementedError

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The keep-mask the pruner chooses for `weight` (the selection alone, without any reconstruction)."""
        return self.prune(weight).mask

    def training_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The mask a learned rotation trains against at every step (RotPruner): `mask` itself, unless the
        pruner's selection is an optimisation too costly to repeat per step (FISTA gives its starting mask)."""
        return self.mask(weight)


class ScorePruner(Pruner):
    """A pruner that keeps the highest `scores(W)` by the config's pattern: per output row (`group = "row"`,
    Wanda's comparison group) or over the whole matrix ("matrix"). Its statistics are the squared input
    norms ‖X_j‖² = G_jj, what every score of this family reads."""

    group: ClassVar[str] = "row"

    def __init__(self, config, in_features, device):
        super().__init__(config, in_features, device)
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)  # ||X_j||² over tokens

    def add_batch(self, x: torch.Tensor) -> None:
        self.sq_norm += x.float().pow(2).sum(dim=0)

    def load_gram(self, G: torch.Tensor) -> None:
        self.sq_norm = torch.diagonal(G).clamp_min(0)

    def load_rotated_gram(self, G: torch.Tensor, Q: torch.Tensor) -> None:
        self.sq_norm = ((G @ Q) * Q).sum(0).clamp_min(0)  # ‖X Q_j‖² = q_jᵀ G q_j: only Qᵀ G Q's diagonal

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """The importance of each weight (out × in): the highest are kept."""
        raise NotImplementedError

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        return select_mask(self.scores(weight), self.config.pattern, self.config.sparsity, group=self.group)

    def prune(self, weight: torch.Tensor) -> Pruned:
        keep = self.mask(weight)
        return Pruned(weight.masked_fill(~keep, 0.0), keep)  # +0.0, not the -0.0 that weight * mask gives


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a config field (`--field-name` unless its metadata names another)."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def check_numbers(config) -> None:
    """ValueError for a numeric field that is NaN/Inf or below its metadata's `min` (inclusive) or `above`
    (exclusive) bound."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = flag_name(f)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if "min" in f.metadata and value < f.metadata["min"]:
            raise ValueError(f"{name} must be >= {f.metadata['min']}, got {value}")
        if "above" in f.metadata and not value > f.metadata["above"]:
            raise ValueError(f"{name} must be > {f.metadata['above']}, got {value}")
