"""RotPruner: learn an orthonormal rotation of the residual stream, prune in the rotated space, fuse it away.

    config.py   RotPrunerConfig (every field is a CLI flag)
    ste.py      straight-through estimators through the base pruner's mask
    train.py    the dense teacher pass and the Cayley-SGD loop that learns Q
    attach.py   invariant model → learn Q → fuse → base pruner through the layer-wise engine
"""

from .config import RotPrunerConfig, base_pruners

__all__ = ["RotPrunerConfig", "base_pruners"]
