"""RotPruner: learn an orthonormal rotation of the residual stream, prune in the rotated space, fuse it away.

    config.py   RotPrunerConfig (every field is a CLI flag)
    masking.py  the base pruners' mask rules in the rotated space; straight-through estimators
    train.py    the dense teacher pass and the Cayley-SGD loop that learns Q
    attach.py   invariant model → learn Q → fuse → base pruner through the layer-wise engine
"""

from .config import BASE_PRUNERS, RotPrunerConfig

__all__ = ["BASE_PRUNERS", "RotPrunerConfig"]
