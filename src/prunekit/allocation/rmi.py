"""Layer sparsity from representation mutual information (RMI; LoSA §2.2, after Zheng et al., 2021).

The dependence between two layers' representations is the normalized Hilbert-Schmidt independence
criterion, nHSIC(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) with K, L the kernel (Gram)
matrices of the same n calibration tokens; with the linear kernel it is linear CKA, the measure the
authors' code uses. A layer whose representation depends strongly on all the others carries little
of its own and is less important; the rates solve (corrected Eq. 5)

    min_x Σ_l I_l x_l   s.t.  Σ_l n_l x_l = s Σ_l n_l,   s − δ ≤ x_l ≤ s + δ

(n_l: weights of layer l) with SLSQP, so important layers get the lower sparsity.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import LayerWalk
from .rounding import whole_weight_rates


def gram(X: torch.Tensor, kernel: str = "linear") -> torch.Tensor:
    """The n×n kernel matrix of the rows of X [n, d], in float64.

    rbf: exp(−‖x_i − x_j‖² / 2σ²) with σ² the median squared distance (the usual heuristic)."""
    X = X.double()
    G = X @ X.t()
    if kernel == "linear":
        return G
    if kernel == "rbf":
        sq = torch.diagonal(G)
        d2 = (sq[:, None] + sq[None, :] - 2 * G).clamp_min(0)
        off = d2[~torch.eye(len(X), dtype=torch.bool, device=X.device)]
        sigma2 = off.median().clamp_min(1e-12)
        return torch.exp(-d2 / (2 * sigma2))
    raise ValueError(f"unknown kernel {kernel!r}: use linear or rbf")


def u_center(K: torch.Tensor) -> torch.Tensor:
    """U-centering (Székely & Rizzo, 2014): Ũ_ij = K_ij − K_i·/(n−2) − K_·j/(n−2) + K_··/((n−1)(n−2)),
    zero diagonal. ⟨Ũ(K), Ũ(L)⟩ / (n(n−3)) is the unbiased HSIC estimator of Song et al. (2012):
    unlike the biased tr(KHLH), it is ≈ 0 for independent representations even when the feature
    dimension exceeds the number of samples."""
    n = K.shape[0]
    if n < 4:
        raise ValueError("the unbiased HSIC needs at least 4 samples")
    K = K.clone()
    K.fill_diagonal_(0)
    rows = K.sum(dim=1, keepdim=True)
    U = K - rows / (n - 2) - rows.t() / (n - 2) + K.sum() / ((n - 1) * (n - 2))
    U.fill_diagonal_(0)
    return U


def hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    """Unbiased HSIC of two kernel matrices of the same n samples."""
    n = K.shape[0]
    return float((u_center(K) * u_center(L)).sum() / (n * (n - 3)))


def normalized_hsic(X: torch.Tensor, Y: torch.Tensor, kernel: str = "linear") -> float:
    """nHSIC(X, Y) ∈ [−1, 1] (≈ 0 when independent, 1 when identical); X [n, d], Y [n, d'] are the
    same n samples seen by two layers."""
    return float(similarity_matrix([X, Y], kernel)[0, 1])


def similarity_matrix(features: list[torch.Tensor], kernel: str = "linear") -> torch.Tensor:
    """S_ij = nHSIC(X_i, X_j) for every pair of layers: each Ũ is normalised once, then S = Ũ Ũᵀ."""
    U = []
    for X in features:
        u = u_center(gram(X, kernel)).flatten()
        U.append((u / u.norm().clamp_min(1e-30)).float())
    U = torch.stack(U)
    return (U @ U.t()).double()


def layer_importance(S: torch.Tensor, beta: float = 1.0) -> np.ndarray:
    """I_l = exp(−β · s_l / Σ_k s_k) with s_l = Σ_{j≠l} S_lj (the authors' form): the more a layer's
    representation is shared with the others, the less important it is."""
    s = (S.sum(dim=1) - torch.diagonal(S)).numpy()
    return np.exp(-beta * s / s.sum())


def rmi_sparsity(importance: np.ndarray, sizes: list[int], target: float, delta: float,
                 current: list[float] | None = None) -> list[float]:
    """Per-layer sparsity solving the corrected Eq. 5 with SLSQP, then rounded to whole weights so that
    Σ_l n_l x_l equals round(s · Σ n_l) (each rate moves by less than one weight of its layer).

    `current`: each layer's sparsity now. A pruned weight never comes back (the masked update keeps it
    0), so a layer's rate cannot go below it: it raises that layer's lower bound, and the others
    absorb the difference, keeping the model-wide average at the target."""
    from scipy.optimize import minimize

    sizes_arr = np.asarray(sizes, dtype=np.float64)
    weight = sizes_arr / sizes_arr.sum()
    lo = np.full(len(sizes), max(0.0, target - delta))
    hi = np.full(len(sizes), min(target + delta, 0.999))
    if current is not None:
        lo = np.minimum(np.maximum(lo, np.asarray(current, dtype=np.float64)), hi)
    x0 = np.clip(np.full(len(sizes), target), lo, hi)
    res = minimize(lambda x: float(importance @ x), x0=x0, jac=lambda x: importance,
                   method="SLSQP", bounds=list(zip(lo, hi)),
                   constraints=({"type": "eq", "fun": lambda x: float(weight @ x) - target,
                                 "jac": lambda x: weight},))
    x = np.clip(res.x if res.success else x0, lo, hi)
    return whole_weight_rates(x, sizes_arr, target, lo, hi)


def rmi_delta(sparsity: float) -> float:
    """The authors' half-width of the bounds by the target: 0.01 up to 50%, 0.02 up to 60%, else 0.03."""
    return 0.01 if sparsity <= 0.5 else 0.02 if sparsity <= 0.6 else 0.03


def feature_positions(calib: torch.Tensor, windows: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(window index, token index) of `tokens` distinct positions drawn from the first `windows` windows."""
    windows = min(windows, calib.shape[0])
    total = windows * calib.shape[1]
    flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:min(tokens, total)].sort().values
    return flat // calib.shape[1], flat % calib.shape[1]


@torch.no_grad()
def layer_features(model, calib: torch.Tensor, positions, device, batch_size: int, offload="cpu") -> list[torch.Tensor]:
    """Each decoder layer's output at `positions` [n, dim] (fp32, on the offload device)."""
    windows = int(positions[0].max()) + 1
    walk = LayerWalk(model, calib[:windows], device=device, offload=offload, batch_size=batch_size, progress=False,
                     read_only=True)
    features = []
    for index, layer, kwargs in walk:
        walk.forward(layer, kwargs, out=walk.hidden)
        features.append(walk.hidden[positions].float().clone())
    return features
