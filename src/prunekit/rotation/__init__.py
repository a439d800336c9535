"""Rotating the residual stream of a decoder-only model (shared by RotPruner and SliceGPT-style methods).

    invariant.py  fold norms so that any orthonormal Q leaves the model's function unchanged; fuse Q
    stiefel.py    a learnable Q on the Stiefel manifold and the Cayley optimizers (geoopt)
    view.py       the rotated model as a differentiable function of Q, weights untouched
    residual.py   residual rotations: an A_g per attention/MLP block on top of Q, and their inference products
"""

from . import residual
from .invariant import (LayerSites, ResidualStream, is_rotation_invariant, make_rotation_invariant,
                        residual_stream, rotate_model, untie_head)
from .stiefel import OPTIMIZERS, Rotation, householder_ones, make_optimizer, orthonormality_error, random_rotation
from .view import RotatedForward

__all__ = [
    "OPTIMIZERS", "LayerSites", "ResidualStream", "RotatedForward", "Rotation", "householder_ones",
    "is_rotation_invariant", "make_optimizer", "make_rotation_invariant", "orthonormality_error",
    "random_rotation", "residual", "residual_stream", "rotate_model", "untie_head",
]
