"""SliceGPT and RotPruner-structured: rotate the residual stream per block and delete whole dimensions.

    config.py   SliceGPTConfig, RotPrunerStructuredConfig (every field is a CLI flag)
    pca.py      the sequential PCA of each block's input: SliceGPT's bases
    layers.py   the sliced modules (RMSN, SlicedLlamaLayer with shortcuts) and the surgery
    fused_norm.py  RMSN as one Triton kernel for half-precision CUDA inference
    train.py    RotPruner-structured: the bases fine-tuned on St(d, k) with KL to the dense model
    attach.py   fold → bases → (learn) → slice; the result's parameter counts
"""

from .config import RotPrunerStructuredConfig, SliceGPTConfig

__all__ = ["RotPrunerStructuredConfig", "SliceGPTConfig"]
