"""LoSA's configuration: what the user sets (every field is also a `prunekit prune --method losa` flag)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...allocation.rmi import rmi_delta
from ...errors import UsageError
from ...pruners import PRUNERS, pruner_class
from ...pruners.base import PruneConfig
from .data import check_spec

ADAPTERS = ("masked", "dense")
RANK_ERRORS = ("output", "local")


@dataclass
class LosaConfig(PruneConfig):
    """Dynamic low-rank sparse adaptation (Huang et al., ICLR 2025).

    The defaults are the paper's (T = 5 stages, r̄ = 8, α = 16, ranks in [1, 16], lr 2e-4, RMI bounds
    ±0.01–0.03). The baselines are the same code with switches: sparse LoRA = `stages=1, rmi=False,
    rank_allocation=False`; dense LoRA = the same with `adapter="dense"` (left unmerged).
    """

    method: ClassVar[str] = "losa"
    summary = (
        "progressive pruning (cubic schedule) with LoRA updates masked by the weights' zeros, merged after "
        'each stage; layer sparsity from representation mutual information, LoRA ranks from reconstruction '
        'error'
    )
    paper = 'Huang et al., 2025 (LoSA)'
    mixed_nm = True  # each layer's N_l from RMI on the dense model (algorithm.py)

    base_pruner: str = field(default="wanda", metadata={"help": "pruner applied at every stage (any layer-wise pruner)"})
    stages: int = field(default=5, metadata={"help": "progressive stages T (cubic schedule from 0 to the target); 1 = one-shot"})
    rank: int = field(default=8, metadata={"help": "average LoRA rank r̄ over layers and stages"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA α; the update is scaled by α / r̄"})
    min_rank: int = field(default=1, metadata={"help": "smallest rank a layer can get"})
    max_rank: int = field(default=16, metadata={"help": "largest rank a layer can get"})
    rank_allocation: bool = field(default=True, metadata={
        "flag": "--no-rank-allocation", "help": "every layer keeps rank r̄ (no error-based ranks, no growth)"})
    rank_error: str = field(default="output", metadata={
        "help": "the error Eq. 7 ranks follow: output = each layer's output against the dense model's on the same "
                "tokens (the paper; it accumulates with depth, so early layers get the fewest ranks); local = the "
                "mean relative error ||WX − ŴX||² / ||WX||² of the layer's operators on their own inputs, from "
                "this stage's pruning"})
    rmi: bool = field(default=True, metadata={
        "flag": "--no-rmi", "help": "uniform layer sparsity instead of RMI rates"})
    rmi_delta: float = field(default=0.0, metadata={
        "help": "layer rates stay within the stage target ± this; 0 = the authors' rule "
                "(0.01 up to 50%%, 0.02 up to 60%%, 0.03 above), or one step of N (1/M) for --pattern mixed-N:M"})
    rmi_kernel: str = field(default="linear", metadata={"help": "HSIC kernel: linear (= linear CKA) or rbf"})
    rmi_tokens: int = field(default=1024, metadata={"help": "calibration tokens whose representations RMI and the reconstruction errors compare"})
    feature_windows: int = field(default=16, metadata={"help": "calibration windows those tokens are drawn from"})
    adapter: str = field(default="masked", metadata={
        "help": "masked: ΔW = (BA)⊙M, merged at the end (LoSA, sparse LoRA); dense: plain LoRA, left unmerged"})
    train_data: str = field(default="pydoc", metadata={
        "help": "fine-tuning text: Alpaca JSON/JSONL (instruction, input, output), text file, or a data name"})
    train_tokens: int = field(default=262144, metadata={"help": "fine-tuning token budget over all stages"})
    train_seqlen: int = field(default=512, metadata={"help": "tokens per fine-tuning window"})
    train_batch_size: int = field(default=4, metadata={"help": "windows per optimizer step"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate of the LoRA factors"})
    train_seed: int = field(default=0, metadata={"help": "seed of the fine-tuning data order and LoRA initialisation"})

    def __post_init__(self):
        super().__post_init__()
        bases = [name for name, cls in PRUNERS.items() if cls.per_layer_sparsity]  # the RMI rates are per layer
        if self.base_pruner not in bases:
            raise ValueError(f"--base-pruner {self.base_pruner!r}: choose one of {', '.join(bases)}")
        if self.pattern.mixed and not self.rmi:
            raise ValueError(f"--pattern {self.pattern} takes each layer's N from RMI: drop --no-rmi")
        if self.pattern.mixed and not PRUNERS[self.base_pruner].mixed_nm:
            raise ValueError(f"--base-pruner {self.base_pruner} cannot prune layers at their own N:M: use "
                             f"--pattern {self.pattern.n}:{self.pattern.m}")
        for name in ("stages", "rank", "min_rank", "max_rank", "rmi_tokens", "feature_windows", "train_tokens",
                     "train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not self.min_rank <= self.rank <= self.max_rank:
            raise ValueError(f"ranks must satisfy --min-rank {self.min_rank} <= --rank {self.rank} <= --max-rank {self.max_rank}")
        if self.rmi_tokens < 4:
            raise ValueError("--rmi-tokens must be at least 4 (the unbiased HSIC estimator needs 4 samples)")
        if self.train_seqlen < 2:
            raise ValueError(f"--train-seqlen must be at least 2, got {self.train_seqlen}")
        if not (self.lr > 0 and self.alpha > 0):
            raise ValueError("--lr and --alpha must be positive")
        if not 0 <= self.rmi_delta < 0.5:
            raise ValueError(f"--rmi-delta must lie in [0, 0.5), got {self.rmi_delta}")
        if self.rmi_kernel not in ("linear", "rbf"):
            raise ValueError(f"--rmi-kernel {self.rmi_kernel!r}: choose linear or rbf")
        if self.rank_error not in RANK_ERRORS:
            raise ValueError(f"--rank-error {self.rank_error!r}: choose one of {', '.join(RANK_ERRORS)}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"--adapter {self.adapter!r}: choose one of {', '.join(ADAPTERS)}")
        if self.adapter == "dense" and self.stages != 1:
            raise ValueError("--adapter dense is the one-shot dense-LoRA baseline (merging it would undo the "
                             "sparsity the next stage prunes): use --stages 1")
        check_spec(self.train_data)

    def delta(self, stage_sparsity: float) -> float:
        """Half-width of the RMI bounds: the flag, or the authors' rule by the stage's sparsity (one step of N,
        1/M, for a mixed N:M pattern: a narrower band would round every layer to N)."""
        if self.rmi_delta > 0:
            return self.rmi_delta
        return self.pattern.step if self.pattern.mixed else rmi_delta(stage_sparsity)

    def check_model(self, model) -> None:
        """Fine-tuning windows must fit the model's context (max_position_embeddings)."""
        context = getattr(model.config, "max_position_embeddings", None)
        if context and self.train_seqlen > context:
            raise UsageError(f"--train-seqlen {self.train_seqlen} is longer than the model's context ({context} "
                             f"positions): use --train-seqlen {context} or less")

    def base_config(self, sparsity: float) -> PruneConfig:
        """The base pruner's config at a stage; for a mixed N:M pattern its layers' N_l are LoSA's RMI ones,
        handed to prunekit.layerwise with the rates (the pruner's own allocation never runs)."""
        mixed = {"layer_sparsity": "rmi"} if self.pattern.mixed else {}
        return pruner_class(self.base_pruner)(sparsity=sparsity, pattern=self.pattern, **mixed)
