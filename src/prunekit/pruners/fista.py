"""FISTAPruner (Zhao et al., 2024, "A Convex-optimization-based Layer-wise Post-training Pruner for
Large Language Models"): layer-wise LASSO solved with FISTA, λ searched for the target sparsity,
intra-layer error correction.

For one linear operator with dense weight W (out × in), the dense model's input X and the pruned
model's input X* (in × tokens), it solves

    min over W*:  ½‖W* X* − W X‖²_F + lam Σ_ij omega_ij |W*_ij|

in Gram form, G = X* X*ᵀ and C = W X X*ᵀ (both in × in, running means over tokens), so that one
iteration costs one (out × in)·(in × in) product and the token dimension never appears in the loop.
The objective is separable over rows: every row is an independent LASSO problem sharing G and lam.
The engine chooses what X and X* are (`error_correction`, see prunekit.correction).

- omega = 1 is the paper's ‖W*‖₁ (`penalty="l1"`); the default omega_ij = 1/|W_ij| is the adaptive
  LASSO (Zou, 2006), which shrinks large weights less and so selects a better support: on SmolLM2
  the plain ‖·‖₁ masks lose to SparseGPT's (BENCHMARKS.md, FISTAPruner section).
- FISTA runs on V = W*·diag(√G_jj) (same problem, better conditioned; `scaled`).
- After the λ search: the final mask keeps the largest |W*_ij|·√G_jj (exact count over the matrix,
  or the N largest of every M for N:M: the paper's hard-thresholding projection), then an optional
  least-squares refit of the kept weights removes the LASSO shrinkage (`refit_iters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..patterns import keep_in_matrix, keep_n_of_m, select_mask
from .base import LayerwiseConfig, Pruned, Pruner

ERROR_CORRECTION = ("intra", "none", "intra+inter")
WARM_STARTS = ("wanda", "zero", "dense")
PENALTIES = ("adaptive", "l1")
ROUNDINGS = ("wanda", "magnitude")


@dataclass
class FistaConfig(LayerwiseConfig):
    """FISTAPruner's options; the defaults are the settings measured in BENCHMARKS.md."""

    method = "fista"
    summary = (
        'per operator, LASSO ½‖W*X* − WX‖² + λ‖·‖₁ solved by FISTA, λ searched for the target sparsity, then '
        'the mask and a least-squares refit; intra-layer error correction'
    )
    paper = 'Zhao et al., 2024 (FISTAPruner)'
    paired_inputs = True
    error_correction: str = field(default="intra", metadata={
        "help": "intra (dense layer inputs, pruned earlier operators of the same layer), "
                "intra+inter (pruned previous layers too) or none (dense inputs everywhere)"})
    warm_start: str = field(default="wanda", metadata={"help": "first FISTA iterate: wanda, zero or dense"})
    lam_steps: int = field(default=10, metadata={
        "help": "rounds of --iters FISTA iterations per operator; λ is re-bracketed after each (the λ search budget)"})
    iters: int = field(default=20, metadata={"help": "FISTA iterations per round"})
    tol: float = field(default=0.005, metadata={
        "help": "stop the λ search once the sparsity is this close to the target (fraction of weights)"})
    refit_iters: int = field(default=20, metadata={
        "help": "conjugate-gradient iterations of the least-squares refit of the kept weights (0: off)"})
    scaled: bool = field(default=True, metadata={
        "flag": "--no-scaled",
        "help": "run FISTA on W* itself instead of on W*·diag(‖X*_j‖) (the same problem, far better conditioned)"})
    penalty: str = field(default="adaptive", metadata={
        "help": "l1 (the paper's lam‖W*‖₁) or adaptive (lam Σ|W*_ij|/|W_ij|, the adaptive LASSO)"})
    round_by: str = field(default="wanda", metadata={
        "help": "final mask from the largest |W*_ij|·‖X*_j‖ (wanda) or |W*_ij| (magnitude)"})
    refit_damp: float = field(default=1e-4, metadata={
        "help": "ridge of the refit, as a fraction of the mean diagonal of G (keeps it well-posed)"})
    monotone: bool = field(default=False, metadata={"flag": "--monotone",
                                                    "help": "monotone FISTA (MFISTA): never accept a worse iterate"})

    def __post_init__(self):
        super().__post_init__()
        if self.error_correction not in ERROR_CORRECTION:
            raise ValueError(f"error correction {self.error_correction!r}: choose one of {', '.join(ERROR_CORRECTION)}")
        for name, value, choices in (("warm start", self.warm_start, WARM_STARTS), ("penalty", self.penalty, PENALTIES),
                                     ("round_by", self.round_by, ROUNDINGS)):
            if value not in choices:
                raise ValueError(f"{name} {value!r}: choose one of {', '.join(choices)}")
        for name in ("lam_steps", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.refit_iters < 0:
            raise ValueError(f"refit_iters must be >= 0, got {self.refit_iters}")
        if not 0.0 <= self.tol < 1.0:
            raise ValueError(f"tol must lie in [0, 1), got {self.tol}")
        if self.refit_damp < 0:
            raise ValueError(f"refit_damp must be >= 0, got {self.refit_damp}")
        if self.parallel_layers and self.error_correction == "intra+inter":
            raise ValueError("--parallel-layers needs independent layers: use error correction intra or none")

    def make_pruner(self, in_features, device):
        return FistaPruner(self, in_features, device)


# ---------------------------------------------------------------------------------------------
# the math, as plain functions of (W*, G, C): each row of W* is its own LASSO problem


def soft_threshold(Z: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """prox of tau‖·‖₁: sign(Z) · max(|Z| − tau, 0)."""
    return torch.sign(Z) * torch.clamp(Z.abs() - tau, min=0.0)


def row_objective(Wp: torch.Tensor, G: torch.Tensor, C: torch.Tensor, lam: float, const: torch.Tensor | float = 0.0,
                  weights: torch.Tensor | None = None):
    """Per row r: ½ w_r G w_rᵀ − w_r c_rᵀ + lam‖w_r‖₁ + const_r, i.e. ½‖w_r X* − (W X)_r‖² + lam‖w_r‖₁
    when const_r = ½‖(W X)_r‖². `weights` (per input) make the penalty lam Σ_j weights_j |w_rj|."""
    l1 = Wp.abs() if weights is None else Wp.abs() * weights
    return ((0.5 * (Wp @ G) - C) * Wp).sum(dim=1) + lam * l1.sum(dim=1) + const


def lipschitz(G: torch.Tensor) -> float:
    """Lip = λmax(G), the Lipschitz constant of the gradient W* ↦ W* G − C (G is symmetric PSD)."""
    return float(torch.linalg.eigvalsh(G)[-1].clamp_min(1e-12))


def fista(W0: torch.Tensor, G: torch.Tensor, C: torch.Tensor, lam: float, Lip: float, iters: int,
          monotone: bool = False, weights: torch.Tensor | None = None) -> torch.Tensor:
    """`iters` FISTA iterations (Beck & Teboulle, 2009) from W0, all rows at once:

        W*_k    = S_{lam/Lip}(Y_k − (Y_k G − C) / Lip)
        t_{k+1} = (1 + √(1 + 4 t_k²)) / 2
        Y_{k+1} = W*_k + ((t_k − 1) / t_{k+1}) (W*_k − W*_{k−1})

    `monotone` is MFISTA (Beck & Teboulle, 2009, §V): Z_k = the prox step above, W*_k is whichever of
    Z_k and W*_{k−1} has the lower objective (per row), and
        Y_{k+1} = W*_k + (t_k / t_{k+1}) (Z_k − W*_k) + ((t_k − 1) / t_{k+1}) (W*_k − W*_{k−1}),
    which costs one more (out × in)·(in × in) product per iteration for the objective.
    `weights` [in] give each input its own threshold lam·weights_j/Lip (a weighted ‖·‖₁).
    """
    tau = lam / Lip if weights is None else (lam / Lip) * weights
    W_prev = W0
    Y = W0
    t = 1.0
    F_prev = row_objective(W0, G, C, lam, weights=weights) if monotone else None
    for _ in range(iters):
        Z = soft_threshold(Y - (Y @ G - C) / Lip, tau)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        if monotone:
            F = row_objective(Z, G, C, lam, weights=weights)
            better = (F <= F_prev).unsqueeze(1)
            W = torch.where(better, Z, W_prev)
            F_prev = torch.minimum(F, F_prev)
            Y = W + (t / t_next) * (Z - W) + ((t - 1.0) / t_next) * (W - W_prev)
        else:
            W = Z
            Y = W + ((t - 1.0) / t_next) * (W - W_prev)
        W_prev, t = W, t_next
    return W_prev


def initial_lam(W: torch.Tensor, G: torch.Tensor, sparsity: float, omega: torch.Tensor | None = None) -> float:
    """A first λ for the search: if G were diagonal, W*_ij = 0 exactly when |W_ij| G_jj ≤ lam·omega_ij
    (the dense W being the λ = 0 solution), so the target quantile of |W_ij| G_jj / omega_ij is the
    right λ then."""
    scores = W.abs() * torch.diagonal(G).unsqueeze(0)
    scores = (scores if omega is None else scores / omega).flatten()
    k = min(max(int(scores.numel() * sparsity), 1), scores.numel())
    return max(float(scores.kthvalue(k).values), 1e-12)


def sparsity_of(W: torch.Tensor) -> float:
    return float((W == 0).sum()) / W.numel()


class Search(NamedTuple):
    W: torch.Tensor
    below: torch.Tensor | None
    lam: float
    updates: int
    rounds: int


def next_lam(lo: tuple[float, float] | None, hi: tuple[float, float] | None, target: float) -> float:
    """The next λ of the bracketing search, from lo = (λ, sparsity below target) and hi = (λ, sparsity
    above target). With both ends known: the split point interpolated in log λ (regula falsi; the
    sparsity is close to linear in log λ), kept inside the middle 80% of the bracket so that the
    bracket always shrinks like bisection's. With one end known: double or halve λ."""
    if lo is not None and hi is not None:
        t = (target - lo[1]) / max(hi[1] - lo[1], 1e-12)
        t = min(max(t, 0.1), 0.9)
        return math.exp((1.0 - t) * math.log(lo[0]) + t * math.log(hi[0]))
    return lo[0] * 2.0 if lo is not None else hi[0] / 2.0


def search_lam(W0: torch.Tensor, G: torch.Tensor, C: torch.Tensor, Lip: float, sparsity: float, lam0: float,
               steps: int, iters: int, tol: float, monotone: bool = False, weights: torch.Tensor | None = None,
               need_below: bool = False):
    """FISTA from W0 with λ adjusted by a bracketing search until the iterate has the target sparsity.

    The budget is fixed: `steps` rounds of `iters` FISTA iterations, each round warm-started from the
    previous one (continuation: neighbouring λ have neighbouring solutions, and every round also
    advances the convergence). After each round the sparsity s is compared with the target: if
    |s − target| > tol, that round's λ becomes the lower (s too low) or upper end of the bracket and
    λ moves to `next_lam`; otherwise λ stays. An end measured on a less converged iterate can be
    stale, so a bracket that has shrunk to nothing (< 1%) forgets its older end.

    With `need_below` (callers that cannot fill a zero back in: no refit), if no round ended at or
    below the target, up to `steps` more rounds lower λ by 1.25× until one does.

    Returns a Search: the last iterate W; the latest iterate `below` whose sparsity is at or below the
    target (None if none was); the final λ; the number of λ updates; the number of rounds run.
    """
    lo = hi = None
    lam, W, below, updates, rounds = lam0, W0, None, 0, steps
    for _ in range(steps):
        W = fista(W, G, C, lam, Lip, iters, monotone, weights)
        s = sparsity_of(W)
        if s <= sparsity:
            below = W
        if abs(s - sparsity) <= tol:
            continue
        if s < sparsity:
            lo = (lam, s)
            if hi is not None and hi[0] <= lam * 1.01:
                hi = None
        else:
            hi = (lam, s)
            if lo is not None and lo[0] >= lam / 1.01:
                lo = None
        lam = next_lam(lo, hi, sparsity)
        updates += 1
    for _ in range(steps if need_below and below is None else 0):
        lam /= 1.25
        updates += 1
        rounds += 1
        W = fista(W, G, C, lam, Lip, iters, monotone, weights)
        if sparsity_of(W) <= sparsity:
            below = W
            break
    return Search(W, below, lam, updates, rounds)


def refit_support(Wp: torch.Tensor, mask: torch.Tensor, G: torch.Tensor, C: torch.Tensor, iters: int,
                  damp: float) -> torch.Tensor:
    """Debias the kept weights: per row, conjugate gradients on min ½ w (G + damp·I) wᵀ − c wᵀ over
    the row's support (w = 0 off the mask), all rows at once, Jacobi-preconditioned, from Wp.

    LASSO shrinks every surviving weight towards zero by about lam/G_jj; once the mask is fixed that
    bias only costs reconstruction error. Each iteration is one (out × in)·(in × in) product."""
    maskf = mask.to(Wp.dtype)
    d = (torch.diagonal(G) + damp).clamp_min(1e-12).unsqueeze(0)
    W = Wp * maskf
    R = (C - W @ G - damp * W) * maskf
    Z = R / d
    P = Z
    rz = (R * Z).sum(dim=1, keepdim=True)
    for _ in range(iters):
        Q = (P @ G + damp * P) * maskf
        pq = (P * Q).sum(dim=1, keepdim=True)
        alpha = torch.where(pq > 0, rz / pq.clamp_min(1e-30), torch.zeros_like(pq))
        W = W + alpha * P
        R = R - alpha * Q
        Z = R / d
        rz_new = (R * Z).sum(dim=1, keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    return W * maskf


def _total(fn, *tensors_and_values) -> float:
    """fn over all rows, in float64: the logged objectives are differences of large terms."""
    args = [a.double() if isinstance(a, torch.Tensor) else a for a in tensors_and_values]
    return float(fn(*args).sum())


class FistaPruner(Pruner):
    """Accumulates G = X* X*ᵀ, M = X X*ᵀ (so that C = W M) and G_dense = X Xᵀ (for ‖W X‖²), as
    running means over tokens; when X* = X (no correction, or the first operators of a layer) the
    three are the same matrix and only G is kept."""

    def __init__(self, config: FistaConfig, in_features, device):
        super().__init__(config, in_features, device)
        self.G = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.M = self.G_dense = None
        self.tokens = 0
        self.extra: dict | None = None

    def add_batch(self, x: torch.Tensor, x_dense: torch.Tensor | None = None) -> None:
        """x: the operator's input in the pruned model (X*ᵀ rows); x_dense: the same tokens' input in
        the dense model (X ᵀ rows), or None when they coincide. Both [tokens, in]."""
        x = x.reshape(-1, self.in_features).to(self.G)
        n = x.shape[0]
        keep = self.tokens / (self.tokens + n)
        self.tokens += n
        if x_dense is not None and self.M is None:
            if self.tokens > n:
                raise ValueError("add_batch: pass x_dense for every batch or for none")
            self.M, self.G_dense = torch.zeros_like(self.G), torch.zeros_like(self.G)
        self.G.mul_(keep).addmm_(x.t(), x, alpha=1.0 / self.tokens)
        if self.M is not None:
            if x_dense is None:
                raise ValueError("add_batch: pass x_dense for every batch or for none")
            xd = x_dense.reshape(-1, self.in_features).to(self.G)
            self.M.mul_(keep).addmm_(xd.t(), x, alpha=1.0 / self.tokens)
            self.G_dense.mul_(keep).addmm_(xd.t(), xd, alpha=1.0 / self.tokens)

    def _lipschitz(self) -> float:
        return self._lipschitz_of(self.G)

    def _lipschitz_of(self, G: torch.Tensor) -> float:
        """λmax, once per group and Gram (the operators of a group share G)."""
        cache = self.__dict__.setdefault("_lip_cache", {})
        key = id(G) if G is self.G else "scaled"
        if key not in cache:
            cache[key] = lipschitz(G)
        return cache[key]

    def warm_start(self, W: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.warm_start == "zero":
            return torch.zeros_like(W)
        if cfg.warm_start == "dense":
            return W.clone()
        return W.masked_fill(~self.wanda_mask(W), 0.0)  # +0.0, not -0.0

    def wanda_mask(self, W: torch.Tensor) -> torch.Tensor:
        """Wanda on the operator's actual input X*: the largest |W_ij|·‖X*_j‖ of each row, by the pattern."""
        scores = W.abs() * torch.diagonal(self.G).clamp_min(0).sqrt().unsqueeze(0)
        return select_mask(scores, self.config.pattern, self.config.sparsity, group="row")

    def training_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """Wanda's selection, FISTA's starting point: a λ search of every operator at every training step would
        cost a whole FISTA pass a step; the final pass after training prunes with FISTA itself."""
        return self.wanda_mask(weight.to(self.G))

    def load_gram(self, G: torch.Tensor) -> None:
        """X* = X: G = M = G_dense (the problem is invariant to the Gram matrix's scale)."""
        self.G, self.M, self.G_dense = G.float(), None, None
        self.__dict__.pop("_lip_cache", None)

    def prune(self, weight: torch.Tensor) -> Pruned:
        """FISTA + λ bisection at the target sparsity, then the final mask (unstructured: the largest
        |W*| of the matrix, exact count; N:M: the N largest |W*| of every M), then the optional
        least-squares refit of the kept weights. Logs λ, iterations and objectives in `self.extra`."""
        cfg = self.config
        G = self.G
        W = weight.to(G)
        C = W @ self.M if self.M is not None else W @ G
        G_dense = self.G_dense if self.G_dense is not None else G
        const = 0.5 * ((W @ G_dense) * W).sum(dim=1)  # ½‖(W X)_r‖² per row
        sparsity = cfg.pattern.sparsity(cfg.sparsity)

        # penalty lam Σ omega_ij |W*_ij|: omega = 1 (the paper's ‖·‖₁) or 1/|W_ij| (adaptive)
        omega = None
        if cfg.penalty == "adaptive":
            omega = 1.0 / W.abs().clamp_min(1e-8 * float(W.abs().max()) + 1e-30)
        lam0 = initial_lam(W, G, sparsity, omega)
        W0 = self.warm_start(W)
        if cfg.scaled:
            # V = W* D with D = diag(√G_jj): ½‖V D⁻¹X*‖² + lam Σ omega_ij |V_ij|/D_j is the same problem
            # in V, with Gram D⁻¹GD⁻¹ (unit diagonal). LLM inputs have features of very different
            # scales, so this lowers the condition number by orders of magnitude and FISTA's 1/Lip step
            # stops neglecting the small-scale features.
            D = torch.diagonal(G).clamp_min(1e-12 * float(torch.diagonal(G).max()) + 1e-30).sqrt()
            Gs, Cs = G / D.unsqueeze(0) / D.unsqueeze(1), C / D.unsqueeze(0)
            weights = 1.0 / D if omega is None else omega / D
            found = search_lam(W0 * D, Gs, Cs, self._lipschitz_of(Gs), sparsity, lam0, cfg.lam_steps, cfg.iters,
                               cfg.tol, cfg.monotone, weights=weights, need_below=not cfg.refit_iters)
            found = found._replace(W=found.W / D, below=None if found.below is None else found.below / D)
        else:
            found = search_lam(W0, G, C, self._lipschitz(), sparsity, lam0, cfg.lam_steps, cfg.iters, cfg.tol,
                               cfg.monotone, weights=omega, need_below=not cfg.refit_iters)
        Wp, lam = found.W, found.lam
        if not cfg.refit_iters and sparsity_of(Wp) > sparsity and found.below is not None:
            # without the refit, a zero that the rounding keeps stays zero: take the latest iterate
            # that has at most the target's zeros, so that the count comes out exact
            Wp = found.below
        objective = _total(row_objective, Wp, G, C, lam, const, omega)
        fista_sparsity = sparsity_of(Wp)

        # the final mask ranks |W*_ij|·‖X*_j‖: the weight's contribution to the output, not its size
        scores = Wp.abs() * torch.diagonal(G).clamp_min(0).sqrt().unsqueeze(0) if cfg.round_by == "wanda" else Wp.abs()
        if cfg.pattern.is_nm:
            mask = keep_n_of_m(scores, cfg.pattern.n, cfg.pattern.m)
        else:
            mask = keep_in_matrix(scores, sparsity)
        Wp = Wp * mask
        error_rounded = _total(row_objective, Wp, G, C, 0.0, const)
        if cfg.refit_iters:
            damp = cfg.refit_damp * float(torch.diagonal(G).mean())
            Wp = refit_support(Wp, mask, G, C, cfg.refit_iters, damp)
        error = _total(row_objective, Wp, G, C, 0.0, const)
        total = float(const.sum())
        self.extra = {
            "lam": lam, "lam_updates": found.updates, "iterations": found.rounds * cfg.iters, "objective": objective,
            "fista_sparsity": fista_sparsity, "rel_error_rounded": error_rounded / total if total else 0.0,
            "rel_error": error / total if total else 0.0, "refit_iters": cfg.refit_iters,
        }
        return Pruned(Wp.masked_fill(~mask, 0.0), mask)  # +0.0 where pruned: `· mask` leaves -0.0, which 2:4 packing refuses
