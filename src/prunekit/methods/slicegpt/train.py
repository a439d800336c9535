"""RotPruner-structured: SliceGPT's bases fine-tuned with RotPruner's loss (KL to the dense model).

    min_{U_a^0, U_m^0, ..., U_a^L}  kl_weight · KL(p_dense ‖ p_sliced(U))
                                    + mse_weight · ‖z(U) − z_dense‖² / ‖z_dense‖²
    s.t.  Uᵀ U = I_k  for every basis (each on the Stiefel manifold St(d, k))

p_sliced(U) is the sliced model (layers.py) with its weights written as functions of the bases and the
frozen dense weights; z(U) = n(h_L) (U_a^L)ᵀ its final hidden state taken back to the original basis, so
the dense head gives its logits. Cayley SGD / Adam steps from geoopt (rotation/stiefel.py), loss and
schedule from RotPruner (methods/rotpruner/train.py). Starts from the PCA bases.

With `checkpoint_layers`, each decoder layer is recomputed in the backward pass (models/recompute.py says what
that saves) and computes its own sliced weights there from its bases (U_a^l, U_m^l, U_a^{l+1}) and the frozen
dense weights, kept in the model's dtype. At Llama-3.1-8B widths in bf16 with 2048-token windows the training
then grows by 1.6 GiB a layer instead of 4.2 (the 1.6 mostly the bases' fp64 Adam state and gradients, which
no recomputation removes): 62.65 GiB at 32 layers (BENCHMARKS.md, issue 23).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ...engine import OFFLOAD
from ...models.adapters import get_adapter
from ...models.recompute import recomputed_layers
from ...rotation.stiefel import _geoopt, make_optimizer, orthonormality_error
from ...rotation.training import TrainingLog, distillation_loss, lr_schedule, mean, window_batches
from .layers import restructure, sliced_layer_tensors


class _DenseHead:
    """What `distillation_loss` needs: logits of final hidden states in the original basis."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.t()


def learn_bases(model: nn.Module, dense: dict[str, torch.Tensor], bases: list[torch.Tensor], windows: torch.Tensor,
                config, device, progress: bool = True,
                tied_scale: torch.Tensor | None = None) -> tuple[list[torch.Tensor], TrainingLog]:
    """Learn the bases on `windows` (the first `train_samples`, prefix of `train_seqlen` tokens) from the
    PCA bases; `dense` = layers.dense_tensors of the rotation-invariant model. Leaves `model` restructured
    to the sliced shapes with placeholder weights: `load_sliced(model, sliced_tensors(...))` after."""
    device = torch.device(device)
    adapter = get_adapter(model)
    windows = windows[: config.train_samples or windows.shape[0]]
    n, seqlen = windows.shape
    tokens = min(config.train_seqlen or seqlen, seqlen)
    steps = config.steps or max(1, round(config.epochs * n / config.train_batch))
    log = TrainingLog(steps=steps, tokens_per_step=tokens * config.train_batch)

    model.to(device)
    model.requires_grad_(False)
    backbone = adapter.backbone
    t0 = time.perf_counter()
    with torch.no_grad():  # the dense teacher's final hidden states (the folded final norm has unit scale)
        z_teacher = torch.cat([backbone(input_ids=b.to(device), use_cache=False).last_hidden_state.float().cpu()
                               for b in windows[:, :tokens].split(config.train_batch)])
    log.teacher_seconds = time.perf_counter() - t0
    # the model's dtype: sliced_layer_tensors converts one tensor at a time to the bases' fp32
    dense = {name: t.to(device) for name, t in dense.items()}
    tied = tied_scale is not None
    shared = bool(getattr(config, "shared_layer_basis", False))
    restructure(model, [b.shape[1] for b in bases], tied=tied, shared=shared)
    model.to(device)
    model.requires_grad_(False)
    head = _DenseHead(dense[adapter.head_path + ".weight"].float())
    embed_name = adapter.embedding_paths[0] + ".weight"
    names = {id(m): name for name, m in model.named_modules()}
    prefix = names[id(backbone)] + "." if names[id(backbone)] else ""
    embed = model.get_submodule(adapter.embedding_paths[0])
    layers = list(adapter.layers())
    prefixes = [adapter.layer_prefix(i) for i in range(len(layers))]

    def layer_tensors(i: int, Ua, Um, Un) -> dict[str, torch.Tensor]:
        # tied: the whole table stays; layer 0 projects it on U_a^0 (in_proj)
        return sliced_layer_tensors(dense, prefixes[i], Ua, Um, Un, shared, in_proj=tied and i == 0)

    geoopt = _geoopt()
    # a shared layer basis is one parameter: U_m^l (odd index) is the frame of U_a^l (the index before)
    slot = [i - 1 if shared and i % 2 else i for i in range(len(bases))]
    by_slot = {i: geoopt.ManifoldParameter(bases[i].detach().to(device, torch.float64).clone(),
                                           manifold=geoopt.CanonicalStiefel()) for i in sorted(set(slot))}
    frames, unique = [by_slot[i] for i in slot], list(by_slot.values())
    optimizer = make_optimizer(config.optimizer, unique, config.lr, config.momentum)
    schedule = lr_schedule(optimizer, config.schedule, steps)
    batches = window_batches(n, config.train_batch, config.train_seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = tqdm(range(steps), desc=f"learning bases (slicing {config.slicing})", disable=not progress)
    for step in bar:
        t1 = time.perf_counter()
        batch = next(batches)
        ids = windows[batch, :tokens].to(device)
        z_dense = z_teacher[batch].to(device)

        U = [f.float() for f in frames]
        overrides = {}
        if not config.checkpoint_layers:  # every layer's tensors now, held for the backward pass
            for i, p in enumerate(prefixes):
                overrides |= {f"{p}.{name}".removeprefix(prefix): t
                              for name, t in layer_tensors(i, *U[2 * i: 2 * i + 3]).items()}
        if tied:  # the final norm maps back to the whole table's basis by (U_a^L)ᵀ
            overrides[adapter.final_norm_path.removeprefix(prefix) + ".out_proj"] = U[-1].t()
        else:
            overrides[embed_name.removeprefix(prefix)] = dense[embed_name]
        # the sliced stream in the bases' dtype (fp32) from the table's (the model's) dtype; untied: x = E[ids] U_a^0
        handle = embed.register_forward_hook(lambda mod, args, out: out.to(U[0].dtype) if tied
                                             else out.to(U[0].dtype) @ U[0])
        try:
            recomputed = recomputed_layers(layers, lambda l: layer_tensors(l, *U[2 * l: 2 * l + 3])) \
                if config.checkpoint_layers else nullcontext()
            with recomputed:
                out = functional_call(backbone, overrides, args=(), kwargs={"input_ids": ids, "use_cache": False},
                                      strict=False)
        finally:
            handle.remove()
        z = out.last_hidden_state if tied else out.last_hidden_state @ U[-1].t()
        loss, kl, mse = distillation_loss(head, z.float(), z_dense, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            log.grad_norm_first = float(sum(f.grad.pow(2).sum() for f in unique).sqrt())
        optimizer.step()
        schedule.step()

        log.record_step(step, t1, loss, kl, mse, device, lambda: max(orthonormality_error(f) for f in unique))
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{mean(log.loss[-10:]):.4f}")

    log.record_peak_memory(device)
    learned = {i: f.detach().cpu().clone() for i, f in by_slot.items()}
    learned = [learned[i] for i in slot]
    model.to(OFFLOAD)
    return learned, log
