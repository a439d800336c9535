"""RotPruner's settings (what the user sets; every field is also a `prunekit prune` flag)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ...pruners import PRUNERS, pruner_class
from ...pruners.base import PruneConfig
from ...rotation import residual
from ...rotation.stiefel import OPTIMIZERS
from .ste import STE_MODES

#: base pruners that are a registered pruner with options: name → (pruner, its options). Any registered
#: pruner is a base too; Q is learned against the pruner's selection alone (`Pruner.training_mask`: its `mask`, or
#: FISTA's Wanda start), and the final pass runs the whole pruner (SparseGPT's reconstruction, FISTA's λ search).
VARIANTS = {"sparsegpt-noupdate": ("sparsegpt", {"update": False})}


def base_pruners() -> list[str]:
    return [*PRUNERS, *VARIANTS]
SCHEDULES = ("cosine", "constant")
TRAIN_DTYPES = ("float32", "tf32", "bfloat16")


@dataclass
class RotPrunerConfig(PruneConfig):
    """RotPruner (Chen et al., "RotPruner: Large Language Model Pruning in Rotated Space", 2024).

    Learn one orthonormal rotation Q of the residual stream (original weights frozen) so that the
    base pruner, applied in the rotated space, loses as little as possible of the dense model's output;
    then fuse Q into the weights and prune with the base pruner. Defaults are the authors' runs:
    Cayley SGD, momentum 0.9, learning rate 1e-4, 20 epochs over the calibration set (one window a
    step), cosine schedule, SR-STE. On SmolLM2 the first gradient has norm ≈ 60, so 1e-4 moves Q by
    ≈ 0.006 (Frobenius) on the first step: the same scale as theirs. Few-step CPU budgets need a
    larger rate (BENCHMARKS.md, RotPruner section).

    Residual rotations (`residual_rotations`, the paper's §3.2): each attention and/or MLP block of layer l also
    gets an orthonormal A_g, g = (kind, l // share_every), starting at I and learned jointly with Q; the block
    reads n(h) A_g with W_in Q A_g and writes o_b A_gᵀ from A_gᵀ Qᵀ W_out, so it is pruned in its own rotated
    space, at the cost of two d × d products per rotated block at inference (prunekit/rotation/residual.py).
    """

    method = "rotpruner"
    summary = (
        'learn an orthonormal rotation Q of the residual stream, prune with a base pruner in the rotated '
        'space, fuse Q into the weights'
    )
    paper = 'Chen et al., 2024 (RotPruner)'
    base_pruner: str = field(default="wanda", metadata={
        "help": "pruner applied in the rotated space: any pruner, or sparsegpt-noupdate"})
    epochs: float = field(default=20.0, metadata={"help": "passes over the training windows (ignored with --steps)"})
    steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = --epochs passes"})
    train_samples: int = field(default=0, metadata={"help": "calibration windows used to learn Q; 0 = all"})
    train_seqlen: int = field(default=0, metadata={"help": "tokens of each window used to learn Q (a prefix); 0 = all"})
    train_batch: int = field(default=1, metadata={"help": "windows per optimizer step"})
    optimizer: str = field(default="cayley-sgd", metadata={"help": "cayley-sgd (with momentum) or cayley-adam"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate of the rotation (Cayley Adam: step length)"})
    momentum: float = field(default=0.9, metadata={"help": "Cayley SGD momentum (Cayley Adam: beta1)"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule: cosine (to 0) or constant"})
    kl_weight: float = field(default=1.0, metadata={"help": "weight of KL(dense ‖ pruned) of the next-token distributions"})
    mse_weight: float = field(default=0.0, metadata={"help": "weight of the relative MSE of the final hidden states"})
    ste: str = field(default="sr-ste", metadata={"help": "gradient through the mask: sr-ste, ste or none"})
    srste_decay: float = field(default=2e-4, metadata={"help": "SR-STE decay λ of the pruned weights", "min": 0.0})
    train_dtype: str = field(default="float32", metadata={"help": "compute dtype while learning Q: float32, tf32 (CUDA matmuls in TF32) or bfloat16 (autocast)"})
    train_seed: int = field(default=0, metadata={"help": "seed of the order of training windows"})
    checkpoint_layers: bool = field(default=True, metadata={
        "flag": "--no-checkpoint-layers", "help": "keep every decoder layer's rotated weights and activations for the backward pass instead of "
                "recomputing each layer there (recomputing: one layer's memory instead of all, one more forward "
                "pass of time)"})
    residual_rotations: str = field(default="none", metadata={
        "help": "residual rotations: an orthonormal A per attention and/or MLP block, learned with Q, pruned in its "
                "space, applied at inference as two d x d products per block: none, attn, mlp or both"})
    share_every: int = field(default=1, metadata={
        "help": "consecutive layers that share one residual rotation (the authors: 4)", "min": 1})
    blocksize: int = field(default=128, metadata={"help": "columns per block of lazy updates", "min": 1})
    percdamp: float = field(default=0.01, metadata={"help": "Hessian damping, fraction of its mean diagonal",
                                                     "above": 0.0})

    def __post_init__(self):
        super().__post_init__()
        _one_of("--base-pruner", self.base_pruner, base_pruners())
        _one_of("--optimizer", self.optimizer, OPTIMIZERS)
        _one_of("--schedule", self.schedule, SCHEDULES)
        _one_of("--ste", self.ste, STE_MODES)
        _one_of("--train-dtype", self.train_dtype, TRAIN_DTYPES)
        _one_of("--residual-rotations", self.residual_rotations, residual.CHOICES)
        if self.share_every != 1 and self.residual_rotations == "none":
            raise ValueError(f"--share-every {self.share_every} shares residual rotations: add --residual-rotations "
                             f"attn, mlp or both")
        check_training(self)
        self.base_config()  # N:M and blocksize checks of the base pruner

    def check_model(self, model) -> None:
        """A UsageError, before any work, for a model whose residual stream cannot be rotated."""
        from ...rotation import residual_stream

        residual_stream(model)
        if self.residual_rotations != "none":
            residual.blocks(model, residual.kinds_of(self.residual_rotations), self.share_every)

    def base_config(self) -> PruneConfig:
        """The base pruner's config: same pattern and sparsity, and every option of this config that the pruner
        also has (SparseGPT's blocksize and percdamp)."""
        name, options = VARIANTS.get(self.base_pruner, (self.base_pruner, {}))
        cls = pruner_class(name)
        shared = {f.name for f in fields(cls)} & {f.name for f in fields(self)} - {"sparsity", "pattern"}
        return cls(sparsity=self.sparsity, pattern=self.pattern, **{n: getattr(self, n) for n in shared}, **options)


def _one_of(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{flag} {value!r}: choose one of {', '.join(choices)}")


def check_training(cfg) -> None:
    """The checks shared by every config that learns rotations (budget, optimizer, loss weights)."""
    for name in ("steps", "train_samples", "train_seqlen"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.train_batch <= 0:
        raise ValueError(f"--train-batch must be a positive integer, got {cfg.train_batch}")
    if cfg.epochs <= 0 and cfg.steps == 0:
        raise ValueError(f"--epochs must be positive (or pass --steps), got {cfg.epochs}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.momentum < 1:
        raise ValueError(f"--momentum must lie in [0, 1), got {cfg.momentum}")
    if cfg.kl_weight < 0 or cfg.mse_weight < 0 or cfg.kl_weight + cfg.mse_weight == 0:
        raise ValueError("--kl-weight and --mse-weight must be >= 0 and not both 0")
