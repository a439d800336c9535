"""SliceGPT's bases: per block, the principal directions of the residual stream on calibration data.

For the signal X (tokens × d) read by a block, C = Σ n(x)ᵀ n(x) over the calibration tokens, n the
(folded, unit-scale) RMSNorm, eigendecomposed in float64: C = Q Λ Qᵀ with λ₁ ≥ … ≥ λ_d, and U = Q[:, :k]
keeps the k directions of largest energy (Ashkboos et al. 2024, §3.3, eq. 9).

Sequential scheme (the paper's): every signal is computed by the ALREADY SLICED earlier blocks. Slicing
with basis U is, in the original coordinates, the projection P = U Uᵀ of the residual stream where the
basis changes, and the sliced norm RMSN(x U) equals the dense norm of the projected x U Uᵀ
(layers.py), so the pass runs the dense folded layer's own modules on projected signals:

    h_0 = P_a^0 emb
    m   = P_m^l (h + attn(n(h)))        U_m^l from the PCA of m before the projection
    h'  = P_a^{l+1} (m + mlp(n(m)))     U_a^{l+1} from the PCA of h' before the projection

Shared layer basis (`shared=True`): one basis per layer, U^l = U_a^l = U_m^l, from the PCA of both signals
the layer reads, C = C(h) + C(h + attn(n(h))) with h the layer's unprojected input; the layer then runs on
P h and its MLP input is P (P h + attn(n(P h))). The attention shortcut (U_a^l)ᵀ U_m^l is then the identity
and is not stored: the sliced model reads k² fewer weights per layer and token.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...engine import LayerWalk


def sliced_width(d: int, slicing: float, round_to: int = 1) -> int:
    """k = d − slicing·d, rounded to the nearest multiple of `round_to` (kernels like widths that are
    multiples of 8), at least `round_to` and at most d."""
    k = d * (1.0 - slicing)
    k = int(round(k / round_to)) * round_to
    return max(min(k, d), min(round_to, d))


def _normed(h: torch.Tensor, eps: float) -> torch.Tensor:
    h = h.double()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


class _Covariance:
    """C = Σ n(x)ᵀ n(x) in float64, batch by batch, on the device that runs the layers (a float64 product of
    262k calibration tokens takes minutes on a CPU, a fraction of a second on a GPU)."""

    def __init__(self, d: int, eps: float, device="cpu"):
        self.device = torch.device(device)
        self.C, self.eps = torch.zeros(d, d, dtype=torch.float64, device=self.device), eps

    def add(self, h: torch.Tensor) -> None:
        x = _normed(h.reshape(-1, h.shape[-1]).to(self.device), self.eps)
        self.C.addmm_(x.t(), x)

    def basis(self, k: int) -> torch.Tensor:
        """U = the k eigenvectors of largest eigenvalue (d × k, float64)."""
        eigenvalues, Q = torch.linalg.eigh(self.C)
        order = torch.argsort(eigenvalues, descending=True)
        return Q[:, order[:k]].contiguous()


@torch.no_grad()
def pca_bases(model: nn.Module, calib: torch.Tensor, k: int, device="cpu", batch_size: int = 8,
              progress: bool = True, shared: bool = False) -> list[torch.Tensor]:
    """[U_a^0, U_m^0, ..., U_a^L] (float32, d × k) of a rotation-invariant Llama-family model; with `shared`
    (module docstring) U_m^l is the same tensor object as U_a^l."""
    eps = float(getattr(model.config, "rms_norm_eps", 1e-6))
    d = model.config.hidden_size
    walk = LayerWalk(model, calib, device=device, batch_size=batch_size, progress=progress, desc="SliceGPT PCA")
    hidden = walk.hidden  # [n, T, d] on the offload device: the layer's input, then its output, projected in place
    pinned = torch.device(device).type == "cuda" and hidden.device.type == "cpu"
    mids = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device, pin_memory=pinned)  # MLP inputs

    def batches(t: torch.Tensor):
        return t.split(batch_size)

    def fit(*signal_lists) -> torch.Tensor:
        cov = _Covariance(d, eps, device)
        for signals in signal_lists:
            for s in signals:
                cov.add(s)
        return cov.basis(k).to(torch.float32)

    def project(t: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """t U Uᵀ on the device that runs the layers, in float32 (a bfloat16 model's activations too)."""
        t, U = t.to(device), U.to(device)
        return ((t.to(U.dtype) @ U) @ U.t()).to(t.dtype)

    def project_in_place(t: torch.Tensor, U: torch.Tensor) -> None:
        for b in batches(t):
            b.copy_(project(b, U))

    def attention_out(layer, kwargs, h: torch.Tensor) -> torch.Tensor:
        h = h.to(device)
        a, _ = layer.self_attn(hidden_states=layer.input_layernorm(h), **kwargs)
        return h + a

    bases = []
    if not shared:
        bases.append(fit(batches(hidden)))
        project_in_place(hidden, bases[0])
    for index, layer, kwargs in walk:
        if shared:  # U^l from the layer's unprojected input and the MLP input it would give
            U = fit(batches(hidden), (attention_out(layer, kwargs, b) for b in batches(hidden)))
            bases.append(U)
            project_in_place(hidden, U)
        for h, m in zip(batches(hidden), batches(mids)):
            m.copy_(attention_out(layer, kwargs, h))
        Um = bases[-1] if shared else fit(batches(mids))
        bases.append(Um)
        for m, o in zip(batches(mids), batches(hidden)):  # the input is spent: `hidden` takes the layer's output
            m = project(m, Um)
            o.copy_(m + layer.mlp(layer.post_attention_layernorm(m)))
        last = index == len(walk.layers) - 1
        if not shared or last:  # with a shared basis the next layer fits its own on this unprojected output
            bases.append(fit(batches(hidden)))
            project_in_place(hidden, bases[-1])
    return bases
