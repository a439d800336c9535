"""Layer rates from the measured loss (`--layer-sparsity sensitivity`): each decoder layer pruned alone at each
candidate rate, then the rates whose summed loss is least, with the average exactly the target.

The loss of a whole allocation is taken as additive over layers (SPDY's model; Frantar & Alistarh, ICML 2022):

    L(x) ≈ L_dense + Σ_l (L_l(x_l) − L_dense),

with L_l(r) the calibration loss (mean next-token NLL on the first `windows` calibration windows) when layer l
alone is pruned at rate r. The probe prunes with Wanda's score |W_ij| · ‖X_j‖₂ on the dense model's inputs,
whatever the pruner (as OWL's outlier scores are Wanda's). Each layer's candidates are the target and one step h
either side,

    x_l = s − j_l h,  j_l ∈ {−1, 0, +1}:  h = 1/M for mixed N:M (N_l = N + j_l); h = λ for unstructured,

and  min Σ_l L_l(x_l)  s.t.  Σ_l n_l x_l = s Σ_l n_l  is solved exactly by dynamic programming, with Σ j_l = 0 over
the layers of each size n_l (a transformer's decoder layers are one size: as many steps up as down).

`--layer-sparsity sensitivity-blocks` does the same per residual block: the attention operators and the MLP operators
of each layer are probed and stepped on their own (l above runs over blocks), as many attention blocks up as down and
as many MLP blocks up as down (the two kinds differ in size, so each kind averages the target by itself).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..engine import LayerWalk
from ..errors import UsageError
from ..eval.perplexity import head_nll
from ..models.adapters import get_adapter
from ..patterns import Pattern, select_mask
from ..streaming import layer_store
from .owl import group_input_norms
from .rounding import whole_weight_rates

#: the calibration windows the loss is measured on (the first ones: calibration windows are drawn at random)
LOSS_WINDOWS = 8
#: the refusal for a streamed model (--offload disk), checked before any work (prunekit.methods.check_options)
NEEDS_MEMORY = ("--layer-sparsity sensitivity runs every later layer for each probed one: load the model in memory "
                "(drop --offload disk) or use --layer-sparsity owl or rmi")
#: a layer's step j: down (sparser by h), none, up (denser by h)
STEPS = (-1, 0, 1)


def step_rates(target: float, h: float) -> list[float]:
    """The candidate rates s − j h of STEPS, in that order: s + h, s, s − h."""
    return [target - j * h for j in STEPS]


@torch.no_grad()
def layer_losses(model, calib: torch.Tensor, pattern: Pattern, target: float, h: float, *, windows: int = LOSS_WINDOWS,
                 blocks: bool = False, device="cpu", offload="cpu", batch_size: int = 8,
                 progress: bool = True) -> tuple[np.ndarray, float]:
    """(L_u at each of step_rates for every unit [units, 3] (inf where the rate leaves [0, 1)), L_dense): the units are
    the decoder layers, or with `blocks` each layer's residual blocks in turn (attention, MLP: adapter.block_of)."""
    if layer_store(model) is not None:
        raise UsageError(NEEDS_MEMORY)
    walk = LayerWalk(model, calib, device=device, offload=offload, batch_size=batch_size, progress=progress,
                     desc="block sensitivity" if blocks else "layer sensitivity", read_only=True)
    loss_ids = calib[:windows]
    rates = step_rates(target, h)
    losses, dense = [], None
    for index, layer, kwargs in walk:
        start = walk.hidden[:windows].clone()  # this layer's dense inputs on the loss windows
        groups = walk.adapter.linear_groups(layer)
        norms = group_input_norms(walk, layer, kwargs, groups)  # advances walk.hidden to the dense outputs
        if dense is None:
            dense = loss_through_rest(model, walk, index, start, loss_ids)
        for unit in unit_groups(walk.adapter, groups, blocks):
            row = [math.inf] * len(rates)
            for k, rate in enumerate(rates):
                if 0.0 <= rate < 1.0:
                    with pruned_alone([groups[g] for g in unit], [norms[g] for g in unit],
                                      pattern.of_layer(rate) if pattern.mixed else pattern, rate):
                        row[k] = loss_through_rest(model, walk, index, start, loss_ids)
            losses.append(row)
    return np.array(losses), dense


def unit_groups(adapter, groups, blocks: bool) -> list[list[int]]:
    """The indices into a layer's `groups` of each unit probed and stepped as one: the whole layer, or each residual
    block (adapter.block_of) in order."""
    if not blocks:
        return [list(range(len(groups)))]
    of = [adapter.block_of(group[0][0]) for group in groups]
    return [[g for g in range(len(groups)) if of[g] == b] for b in sorted(set(of))]


@contextmanager
def pruned_alone(groups, norms: list[torch.Tensor], pattern: Pattern, rate: float):
    """The layer's operators pruned by Wanda's score |W_ij| · ‖X_j‖₂ (norms: each group's input norms) at `rate`
    with `pattern` for the block; their weights restored after it, also when it fails."""
    saved = [(op, op.weight.data.clone()) for group in groups for _, op in group]
    try:
        for g, group in enumerate(groups):
            for _, op in group:
                scores = op.weight.data.float().abs() * norms[g].unsqueeze(0)
                op.weight.data.mul_(select_mask(scores, pattern, rate).to(op.weight.dtype))
        yield
    finally:
        for op, weight in saved:
            op.weight.data.copy_(weight)


def loss_through_rest(model, walk: LayerWalk, index: int, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token NLL on `ids` from decoder layer `index`'s inputs `hidden`, through the later layers (each
    on the walk's device for its turn, then back on the offload device) and the head."""
    x = hidden.clone()
    for j in range(index, len(walk.layers)):
        if j == index:  # the walk's own layer, already on the device
            walk.forward(walk.layers[j], walk.inputs.kwargs[j], hidden=x, out=x)
            continue
        try:
            walk.forward(walk.layers[j].to(walk.device), walk.inputs.kwargs[j], hidden=x, out=x)
        finally:
            walk.layers[j].to(walk.offload)
    nll, count = head_nll(model, walk.adapter, x, ids, walk.device, walk.offload, walk.batch_size)
    return nll / count


def least_loss_steps(losses: np.ndarray, sizes: list[int]) -> list[int]:
    """Each layer's step j_l ∈ STEPS minimising Σ_l losses[l, j_l] with Σ j_l = 0 over the layers of each size
    (dynamic programming over the running sum of steps; among equal sums the first path found is kept, trying step 0
    first, so equal losses leave every layer at the target)."""
    sizes = np.asarray(sizes)
    steps = [0] * len(sizes)
    order = sorted(range(len(STEPS)), key=lambda k: abs(STEPS[k]))  # try step 0 first: ties stay uniform
    for size in np.unique(sizes):
        same = np.flatnonzero(sizes == size)
        best = {0: (0.0, [])}  # running sum of steps → (least loss, steps so far)
        for l in same:
            nxt: dict[int, tuple[float, list[int]]] = {}
            for total, (cost, chosen) in best.items():
                for k in order:
                    if math.isinf(losses[l, k]):
                        continue
                    key, value = total + STEPS[k], cost + losses[l, k]
                    if key not in nxt or value < nxt[key][0]:
                        nxt[key] = (value, chosen + [STEPS[k]])
            best = nxt
        for l, j in zip(same, best[0][1]):
            steps[l] = j
    return steps


def sensitivity_rates(model, calib: torch.Tensor, pattern: Pattern, target: float, h: float, sizes: list[int], *,
                      blocks: bool = False, device="cpu", offload="cpu", batch_size: int = 8,
                      progress: bool = True) -> tuple[list, dict]:
    """(each layer's rate, or with `blocks` each layer's [attention, MLP] rates; report.json's record) for the target
    `target` with step `h` (module docstring); `sizes`: the weights of each unit (layer, or block in layer order).
    For a mixed N:M pattern the rates are exactly 1 − N_l/M, else rounded to whole weights within s ± h."""
    losses, dense = layer_losses(model, calib, pattern, target, h, blocks=blocks, device=device, offload=offload,
                                 batch_size=batch_size, progress=progress)
    steps = least_loss_steps(losses, sizes)
    if pattern.mixed:  # whole steps of N: exactly 1 − N_l/M
        rates = [pattern.layer_sparsity(pattern.n + j) for j in steps]
    else:
        lo, hi = np.full(len(sizes), max(0.0, target - h)), np.full(len(sizes), min(1.0, target + h))
        rates = whole_weight_rates(np.array([target - j * h for j in steps]), np.asarray(sizes), target, lo, hi)
    if blocks:  # one [attention, MLP] pair per layer
        per_layer = len(rates) // len(get_adapter(model).layers())
        rates = [rates[i:i + per_layer] for i in range(0, len(rates), per_layer)]
    report = {"allocation": "sensitivity-blocks" if blocks else "sensitivity", "step": h,
              "loss_windows": min(LOSS_WINDOWS, len(calib)),
              "dense_loss": dense,
              "candidate_rates": step_rates(target, h),
              "losses": [[None if math.isinf(v) else float(v) for v in row] for row in losses], "rates": rates}
    if pattern.mixed:
        report["mixed"] = {"pattern": str(pattern), "N": [pattern.n + j for j in steps]}
    return rates, report
