"""SliceGPT's and RotPruner-structured's settings (every field is also a `prunekit prune` flag)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...pruners.base import PruneConfig
from ...rotation.stiefel import OPTIMIZERS
from .layers import check_sliceable
from ..rotpruner.config import SCHEDULES, _one_of, check_training


@dataclass
class SliceGPTConfig(PruneConfig):
    """SliceGPT (Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows and Columns",
    ICLR 2024): make the model rotation-invariant, rotate each block's residual-stream input onto the
    principal directions of its calibration signal (sequentially, through the already-sliced blocks) and
    delete the `slicing` fraction of directions of least energy. Embeddings, every operator that reads or
    writes the residual stream and the head shrink; consecutive bases are joined by shortcut matrices.
    It leaves no zeros (`sparsity` 0.0); the report gives the parameters removed."""

    method = "slicegpt"
    summary = (
        "structured: rotate each block's residual-stream input onto its calibration PCA basis and delete the "
        '`--slicing` fraction of least-energy directions; smaller matrices'
    )
    paper = 'Ashkboos et al., ICLR 2024 (SliceGPT)'
    removes = "slicing"
    slicing: float = field(default=0.25, metadata={"help": "fraction of the hidden dimension removed, in [0, 1)"})
    round_to: int = field(default=8, metadata={"help": "round the kept width to a multiple of this"})
    keep_tied: bool = field(default=True, metadata={
        "flag": "--no-keep-tied",
        "help": "untie tied input/output embeddings and slice both, as in the paper (without the flag the shared "
                "table stays whole, joined to the sliced stream by a d×k projection at each end)"})
    shared_layer_basis: bool = field(default=False, metadata={
        "help": "one basis per layer for its attention and MLP inputs (PCA of both): no attention shortcut, "
                "k² fewer weights read per layer and token"})

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.slicing < 1:
            raise ValueError(f"--slicing must lie in [0, 1), got {self.slicing}")
        if self.round_to <= 0:
            raise ValueError(f"--round-to must be a positive integer, got {self.round_to}")

    def check_model(self, model) -> None:
        """A UsageError for architectures slicing does not support (before calibration starts)."""
        check_sliceable(model)


@dataclass
class RotPrunerStructuredConfig(SliceGPTConfig):
    """RotPruner's loss and optimizer on SliceGPT's structure ("rotpruner-structured").

    Starts from SliceGPT's PCA bases U_a^0, U_m^0, ..., U_a^L (each d × k, orthonormal columns: only the
    kept directions of each block's rotation matter) and fine-tunes all of them jointly, on the Stiefel
    manifold St(d, k) with geoopt's Cayley optimizers, to minimise KL(p_dense ‖ p_sliced) of the next-token
    distributions on calibration windows, the sliced model being a differentiable function of the bases
    (weights frozen). Then slices with the learned bases. `--steps` optimizer steps of `--train-batch`
    windows of `--train-seqlen` tokens."""

    method = "rotpruner-structured"
    summary = (
        "structured: SliceGPT's bases fine-tuned on the Stiefel manifold with RotPruner's KL loss, then "
        'sliced'
    )
    paper = "RotPruner's loss on SliceGPT"
    steps: int = field(default=50, metadata={"help": "optimizer steps; 0 = --epochs passes"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training windows (ignored with --steps)"})
    train_samples: int = field(default=0, metadata={"help": "calibration windows used to learn Q; 0 = all"})
    train_seqlen: int = field(default=0, metadata={"help": "tokens of each window used to learn Q (a prefix); 0 = all"})
    train_batch: int = field(default=1, metadata={"help": "windows per optimizer step"})
    optimizer: str = field(default="cayley-adam", metadata={"help": "cayley-sgd (with momentum) or cayley-adam"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of the rotation (Cayley Adam: step length)"})
    momentum: float = field(default=0.9, metadata={"help": "Cayley SGD momentum (Cayley Adam: beta1)"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule: cosine (to 0) or constant"})
    kl_weight: float = field(default=1.0, metadata={
        "help": "weight of KL(dense ‖ pruned) of the next-token distributions"})
    mse_weight: float = field(default=0.0, metadata={"help": "weight of the relative MSE of the final hidden states"})
    train_seed: int = field(default=0, metadata={"help": "seed of the order of training windows"})
    checkpoint_layers: bool = field(default=True, metadata={
        "flag": "--no-checkpoint-layers",
        "help": "keep every decoder layer's sliced weights and activations for the backward pass instead of "
                "recomputing each layer there (recomputing: one layer's memory instead of all, one more forward "
                "pass of time)"})

    def __post_init__(self):
        super().__post_init__()
        _one_of("--optimizer", self.optimizer, OPTIMIZERS)
        _one_of("--schedule", self.schedule, SCHEDULES)
        check_training(self)
