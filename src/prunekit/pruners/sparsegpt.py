"""SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"): OBS mask selection and weight reconstruction, column by column.

With `quantize="fp8"` the same pass also quantizes, as the paper's joint sparsification and quantization and GPTQ
(Frantar et al., 2023) do: each column's kept weights are rounded to FP8 before its error is spread over the later
columns, so the rounding error is compensated like the pruning error. `GPTQConfig` runs that pass with the mask
fixed to a weight's non-zeros: quantization of a model another pruner has already pruned."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..patterns import keep_in_matrix, keep_n_of_m
from ..quantize.fp8 import fp8_scale, round_to_fp8
from ..sparse.packing import nonzero_bits
from .base import LayerwiseConfig, Pruned, Pruner

#: --quantize: none, or fp8 (E4M3 weights, one power-of-two scale per output channel: prunekit.quantize.fp8)
QUANTIZE = ("none", "fp8")
#: binades of headroom of the pass's FP8 scales above each dense row's largest weight: the updates grow kept weights
#: (they absorb the pruned ones' error) and E4M3 saturates at 448·s. Chosen on C4 validation (BENCHMARKS.md, issue
#: 25): SmolLM2's 2:4 + FP8 (W8A8) scored 175.34 with none and 171.80 with 1; 2 binades were no better than 1.
SCALE_HEADROOM = 1


@dataclass
class SparseGPTConfig(LayerwiseConfig):
    """`update=False` keeps SparseGPT's mask rule but skips the weight reconstruction."""

    method = "sparsegpt"
    summary = 'OBS mask selection and column-wise weight reconstruction (`--no-update`: mask only)'
    paper = 'Frantar & Alistarh, 2023'
    blocksize: int = field(default=128, metadata={"help": "columns per block of lazy updates", "min": 1})
    percdamp: float = field(default=0.01, metadata={"help": "Hessian damping, fraction of its mean diagonal",
                                                     "above": 0.0})
    update: bool = field(default=True, metadata={"flag": "--no-update",
                                                 "help": "mask only, without weight reconstruction"})
    act_order: bool = field(default=False, metadata={
        "flag": "--act-order",
        "help": "run the column pass in descending order of the Hessian's diagonal (GPTQ's act-order; N:M groups move "
                "whole, ranked by their summed diagonal), so the most active inputs are settled first and the later "
                "columns absorb their error"})
    quantize: str = field(default="none", metadata={
        "help": "fp8: also round the kept weights to FP8 (E4M3, a scale per output channel) in the same column "
                "pass, their rounding error compensated like the pruning error; the model then runs W8A8 (inputs "
                "FP8 per token) and is saved in the compact format"})

    def __post_init__(self):
        super().__post_init__()
        if self.quantize not in QUANTIZE:
            raise ValueError(f"unknown --quantize {self.quantize!r}: choose one of {', '.join(QUANTIZE)}")
        if self.pattern.is_nm and self.blocksize % self.pattern.m:
            raise ValueError(f"blocksize {self.blocksize} must be a multiple of M={self.pattern.m}")

    def make_pruner(self, in_features, device):
        return SparseGPTPruner(self, in_features, device)


class SparseGPTPruner(Pruner):
    def __init__(self, config, in_features, device):
        super().__init__(config, in_features, device)
        self.H: torch.Tensor | None = None  # allocated by the first add_batch
        self.tokens = 0
        self._factor = self._cholesky = self._selection = self._order = None

    def add_batch(self, x: torch.Tensor) -> None:
        """H = (2/n) Σ x xᵀ over the n calibration tokens, kept as a running mean for fp32 accuracy."""
        if self.H is None:
            self.H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=self.device)
        x = x.to(self.H.dtype)
        n = x.shape[0]
        self.H *= self.tokens / (self.tokens + n)
        self.tokens += n
        x = x * (2.0 / self.tokens) ** 0.5
        self.H += x.t() @ x
        self._factor = self._cholesky = self._selection = self._order = None

    def load_gram(self, G: torch.Tensor) -> None:
        """The selection's state from G = Σ xᵀx (its scale does not matter: the damping is relative). Only that
        state (two vectors) is kept, not G: RotPruner holds one such pruner per operator group while it trains.
        A pruner loaded this way selects (`mask`) but does not reconstruct (`prune` needs `add_batch`)."""
        self.H, self._factor, self._cholesky, self._order = G, None, None, None
        self._selection = self._selection_state()
        self.H = self._cholesky = None

    def _damped_cholesky(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, dead): J P (H + λI) Pᵀ J = L Lᵀ with J reversing the order, P the pass's column order (`_order`: the
        identity unless act_order), λ = percdamp · mean diag(H); `dead` in P's order.

        Damping keeps H invertible when calibration inputs are rank-deficient; 1% of the mean diagonal
        is the paper's choice. Inputs that never fire (`dead`) get H_jj = 1 and their weights are zeroed.
        Computed once per statistics and shared by the operators of a group."""
        if self._cholesky is None:
            self._cholesky = self._factorize()
        return self._cholesky

    def _column_order(self, diag: torch.Tensor) -> torch.Tensor | None:
        """act_order: the columns by descending diag(H), an N:M pattern's groups of M moved whole (ranked by their
        summed diagonal, their columns kept in order, so every group stays one group); None: the natural order."""
        if not self.config.act_order:
            return None
        m = self.config.pattern.m if self.config.pattern.is_nm else 1
        groups = torch.argsort(diag.view(-1, m).sum(1), descending=True, stable=True)
        return (groups.unsqueeze(1) * m + torch.arange(m, device=diag.device)).reshape(-1)

    def _natural(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """A tensor whose dimension `dim` runs over the columns in the pass's order (`_order`), put back in the
        weight's own order."""
        if self._order is None:
            return t
        return torch.empty_like(t).index_copy_(dim, self._order, t)

    def _factorize(self) -> tuple[torch.Tensor, torch.Tensor]:
        # one in × in temporary besides H and L (an 8B model's down_proj: 0.8 GB each): J P H Pᵀ J, damped in place
        # (P the pass's column order, `_order`; J reverses it)
        diag = torch.diag(self.H)
        self._order = self._column_order(diag)
        reverse = None if self._order is None else self._order.flip(0)
        if self._order is not None:
            diag = diag[self._order]
        dead = diag == 0
        damp = self.config.percdamp * torch.mean(torch.where(dead, 1.0, diag))
        for attempt in range(6):  # raise the damping tenfold while H + λI is numerically not positive definite
            JHJ = self.H.flip(0, 1) if reverse is None else self.H[reverse[:, None], reverse]
            JHJ.diagonal()[dead.flip(0)] = 1.0
            JHJ.diagonal().add_(damp * 10**attempt)
            L, info = torch.linalg.cholesky_ex(JHJ)
            del JHJ
            if info == 0:
                return L, dead
        raise RuntimeError("SparseGPT: the damped Hessian is not positive definite; raise percdamp")

    def inverse_hessian_factor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, dead): U is the upper Cholesky factor of (H + λI)⁻¹. If J H J = L Lᵀ (J reverses the order),
        then H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J) with J L⁻¹ J upper triangular. Computed once and shared by the
        operators of a group. Both are in the pass's column order (`_order`; with act_order, of P H Pᵀ)."""
        if self._factor is None:
            L, dead = self._damped_cholesky()
            if self._selection is None:  # what `mask` needs (two vectors), kept before H and L go
                self._selection = ((1.0 / torch.diagonal(L)).flip(0), dead)
            # only U is needed from here on: free H and L (in × in each: 3.3 GB at 70B widths' down_proj) early,
            # so that at most three such matrices exist at once (L, the identity, L⁻¹)
            self._cholesky = self.H = None
            eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
            Linv = torch.linalg.solve_triangular(L, eye, upper=False)
            del L, eye
            self._factor = (Linv.flip(0, 1), dead)
        return self._factor

    def _selection_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(d, dead) with d_j = [U]_jj, U as in `inverse_hessian_factor`: [U]_jj = 1 / [L]_jj reversed (in the
        pass's column order)."""
        L, dead = self._damped_cholesky()
        return (1.0 / torch.diagonal(L)).flip(0), dead

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        """SparseGPT's selection without the reconstruction: w_ij² / [U]_jj² per block of columns (or per
        N:M group), the blocks taken in the pass's column order as `prune` takes them."""
        if self._selection is None:
            self._selection = self._selection_state()
        d, dead = self._selection
        scores = (weight if self._order is None else weight[:, self._order]).pow(2) / d.pow(2).unsqueeze(0)
        scores[:, dead] = 0.0  # the weights of inputs that never fire are zeroed before choosing
        pattern = self.config.pattern
        if pattern.is_nm:
            keep = keep_n_of_m(scores, pattern.n, pattern.m)
        else:
            keep = torch.empty_like(scores, dtype=torch.bool)
            for i1 in range(0, scores.shape[1], self.config.blocksize):
                i2 = min(i1 + self.config.blocksize, scores.shape[1])
                keep[:, i1:i2] = keep_in_matrix(scores[:, i1:i2], self.config.sparsity)
        return self._natural(keep, dim=1)

    def prune(self, weight: torch.Tensor) -> Pruned:
        """Algorithm 1 of the paper: per block of columns choose the mask by w²/[H⁻¹]²_jj, then for
        each column j zero the pruned weights (and with quantize="fp8" round the kept ones to the FP8 grid of
        their row's scale s, q_j = s·fp8(w_j / s)) and spread the error over the later columns,
        W[:, j:] -= (w_j − q_j)/[H⁻¹]_jj · [H⁻¹]_{j, j:}  (skipped when update=False).
        The returned weight is exactly Q·s (exact in bf16 too: prunekit.quantize.fp8)."""
        return self._column_pass(weight, fixed_mask=None)

    def _column_pass(self, weight: torch.Tensor, fixed_mask: torch.Tensor | None) -> Pruned:
        """`prune`'s loop; with `fixed_mask` (out × in, True = kept) no mask is chosen: that one is kept.

        Works on Wᵀ so that a column of W is a contiguous row and each update is one rank-1 `addr_`.
        The FP8 scales come from the dense weights before the pass, as in GPTQ, with SCALE_HEADROOM binades above
        each row's largest weight; a weight that the updates push past 448·s saturates there."""
        cfg, pattern = self.config, self.config.pattern
        if self.H is None and self._factor is None:
            raise ValueError("SparseGPT reconstructs from its own statistics: feed add_batch before prune "
                             "(load_gram gives the selection only)")
        Hinv, dead = self.inverse_hessian_factor()
        order = self._order  # the pass's column order (act_order), or None: the weight's own
        Wt = weight.to(Hinv.dtype).t()  # [in, out]
        Wt = Wt.clone(memory_format=torch.contiguous_format) if order is None else Wt[order]
        Wt[dead] = 0.0
        scale = fp8_scale(Wt.t(), SCALE_HEADROOM).to(Wt.device) if cfg.quantize == "fp8" else None  # [out]
        kept = torch.ones_like(Wt, dtype=torch.bool) if fixed_mask is None else fixed_mask.t().contiguous()
        if order is not None and fixed_mask is not None:
            kept = kept[order]
        choose_mask = fixed_mask is None
        for i1 in range(0, Wt.shape[0], cfg.blocksize):
            i2 = min(i1 + cfg.blocksize, Wt.shape[0])
            B, Hb = Wt[i1:i2], Hinv[i1:i2, i1:i2]
            d = torch.diag(Hb).unsqueeze(1)
            keep = kept[i1:i2]
            if choose_mask and not pattern.is_nm:
                keep.copy_(keep_in_matrix(B**2 / d**2, cfg.sparsity))
            errs = torch.zeros_like(B)
            rows, err_rows, keep_rows, d_rows = B.unbind(0), errs.unbind(0), keep.unbind(0), d.unbind(0)
            zero = B.new_zeros(())
            for i in range(i2 - i1):
                if choose_mask and pattern.is_nm and i % pattern.m == 0:
                    scores = (B[i:i + pattern.m] ** 2 / d[i:i + pattern.m] ** 2).t()
                    keep[i:i + pattern.m] = keep_n_of_m(scores, pattern.n, pattern.m).t()
                if scale is None and cfg.update:  # the common case in three kernels (the loop's cost is launches)
                    torch.where(keep_rows[i], zero, rows[i], out=err_rows[i]).div_(d_rows[i])  # (w_j − q_j)/[H⁻¹]_jj
                    B[i:].addr_(Hb[i, i:], err_rows[i], alpha=-1.0)  # leaves the kept w_j exactly as they were
                    continue                                       # (the pruned ones are zeroed after the block)
                q = torch.where(keep_rows[i], rows[i], 0.0)
                if scale is not None:
                    q = round_to_fp8(q, scale)
                if cfg.update:
                    errs[i] = (B[i] - q) / d[i]
                    B[i:].addr_(Hb[i, i:], errs[i], alpha=-1.0)
                B[i] = q
            if scale is None and cfg.update:
                B.masked_fill_(keep.logical_not(), 0.0)
            if cfg.update:
                Wt[i2:].addmm_(Hinv[i1:i2, i2:].t(), errs, alpha=-1.0)
        if order is not None:  # back to the weight's own column order
            Wt, kept = self._natural(Wt), self._natural(kept)
        return Pruned(Wt.t().contiguous(), kept.t().contiguous())


@dataclass
class GPTQConfig(SparseGPTConfig):
    """GPTQ (Frantar et al., 2023) on a model that is already pruned: SparseGPT's column pass with the mask fixed
    to each weight's non-zeros, every kept weight rounded to FP8 and its error spread over the later columns.
    Zeros stay zeros. Not a registered pruner: prunekit.quantize runs it (`FP8Config(compensate=True)`)."""

    method = "gptq-fp8"
    summary = "GPTQ quantization to FP8 with the existing mask kept"
    paper = "Frantar et al., 2023"
    sparsity: float | None = 0.0
    quantize: str = "fp8"

    def make_pruner(self, in_features, device):
        return GPTQPruner(self, in_features, device)


class GPTQPruner(SparseGPTPruner):
    def prune(self, weight: torch.Tensor) -> Pruned:
        """GPTQ's update rule, W[:, j:] -= (w_j − q_j)/[H⁻¹]_jj · [H⁻¹]_{j, j:}, with q_j = s·fp8(w_j / s) on the
        kept weights and 0 on the pruned ones (whose updates from earlier columns are thus passed on, not kept)."""
        return self._column_pass(weight, fixed_mask=nonzero_bits(weight))
