"""Learnable rotations and the Cayley optimizers on the Stiefel manifold.

The optimizers are geoopt's (Kochurov et al.), used rather than written by hand: geoopt is a
maintained, pure-Python library whose `CanonicalStiefel` manifold implements exactly the pieces of
Li, Li & Todorovic, "Efficient Riemannian optimization on the Stiefel manifold via the Cayley
transform" (ICLR 2020):

    Riemannian gradient (canonical metric)   Ĝ = G − X Gᵀ X
    Cayley retraction                          X ← (I − t/2·A)⁻¹ (I + t/2·A) X,   A = U Xᵀ − X Uᵀ (skew)
    momentum                                   M ← β M + Ĝ, moved to the new point by the same Cayley map

`RiemannianSGD(momentum=β)` on that manifold is Cayley SGD with momentum; `RiemannianAdam` is
Cayley Adam (its second moment is the scalar ⟨Ĝ, Ĝ⟩ of the canonical metric, one per matrix, as in
Li et al.'s Algorithm 2). One difference: geoopt solves the Cayley system exactly where Li et al.
approximate it by two fixed-point iterations, so X stays orthonormal to float rounding. The point is
kept in float64: the rotations are small (d×d) and rounding errors then stay far below 1e-5 over
thousands of steps.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UsageError

OPTIMIZERS = ("cayley-sgd", "cayley-adam")


def _geoopt():
    try:
        import geoopt
    except ImportError as err:  # pragma: no cover - the dependency is declared in pyproject.toml
        raise UsageError(f"rotation learning needs geoopt ({err}): pip install geoopt") from err
    return geoopt


def householder_ones(width: int, dtype=torch.float64) -> torch.Tensor:
    """The symmetric orthonormal H with H e₁ = 1/√d (a Householder reflection): its first column
    spans the all-ones direction, the others the zero-mean subspace."""
    u = torch.full((width,), width ** -0.5, dtype=dtype)
    v = -u
    v[0] += 1.0
    if float(v.norm()) < 1e-12:  # width 1: H = I already maps e₁ to 1
        return torch.eye(width, dtype=dtype)
    return torch.eye(width, dtype=dtype) - 2.0 * torch.outer(v, v) / (v @ v)


class Rotation(nn.Module):
    """An orthonormal d×d matrix Q, learnable on the Stiefel manifold, starting at the identity.

    With `fix_ones` (LayerNorm models) Q = H · diag(1, R) · H with R ∈ O(d−1) the learnable point, so
    that Q 1 = 1 for every R (see rotation/invariant.py for why LayerNorm needs it)."""

    def __init__(self, width: int, fix_ones: bool = False, init: torch.Tensor | None = None):
        super().__init__()
        geoopt = _geoopt()
        self.width, self.fix_ones = width, fix_ones
        k = width - int(fix_ones)
        R = torch.eye(k, dtype=torch.float64) if init is None else init.detach().to(torch.float64).clone()
        if R.shape != (k, k):
            raise ValueError(f"initial rotation must be {k}×{k}, got {tuple(R.shape)}")
        self.R = geoopt.ManifoldParameter(R, manifold=geoopt.CanonicalStiefel())
        if fix_ones:
            self.register_buffer("H", householder_ones(width))

    def matrix(self) -> torch.Tensor:
        """Q (float64, differentiable in R)."""
        if not self.fix_ones:
            return self.R
        block = torch.zeros(self.width, self.width, dtype=self.R.dtype, device=self.R.device)
        block[0, 0] = 1.0
        block[1:, 1:] = self.R
        return self.H @ block @ self.H


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9):
    """Cayley SGD with momentum ('cayley-sgd', the paper's choice) or Cayley Adam ('cayley-adam')."""
    geoopt = _geoopt()
    if name == "cayley-sgd":
        return geoopt.optim.RiemannianSGD(params, lr=lr, momentum=momentum)
    if name == "cayley-adam":
        return geoopt.optim.RiemannianAdam(params, lr=lr, betas=(momentum, 0.99))
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def orthonormality_error(Q: torch.Tensor) -> float:
    """max |QᵀQ − I|."""
    Q = Q.detach().double()
    return float((Q.t() @ Q - torch.eye(Q.shape[1], dtype=Q.dtype, device=Q.device)).abs().max())


def random_rotation(width: int, fix_ones: bool = False, seed: int = 0) -> torch.Tensor:
    """A random orthonormal matrix (Haar, by QR of a Gaussian), keeping 1 fixed if asked."""
    g = torch.Generator().manual_seed(seed)
    k = width - int(fix_ones)
    Qr, Rr = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    Qr = Qr * torch.sign(torch.diagonal(Rr)).unsqueeze(0)
    if not fix_ones:
        return Qr
    H = householder_ones(width)
    block = torch.eye(width, dtype=torch.float64)
    block[1:, 1:] = Qr
    return H @ block @ H
