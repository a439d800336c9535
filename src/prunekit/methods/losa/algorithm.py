"""LoSA's progressive loop (Algorithm 1 of the paper), on top of the layer-wise engine.

For each stage t = 1..T, with the model's current (merged) weights:
  1. RMI: each decoder layer's output on a fixed set of calibration tokens → layer sparsity rates
     around s_t (cubic schedule) that keep the model-wide average at s_t;
  2. prune the merged weights with the base pruner at those per-layer rates (prunekit.engine);
  3. ranks: each layer's reconstruction error (`rank_error="output"`: its output against the dense model's;
     "local": its operators' errors in this stage's pruning) → Eq. 7 ranks around the stage's average rank
     (Eq. 9);
  4. attach the mask-aligned LoRA (ΔW = s (BA) ⊙ M) and fine-tune it on the stage's share of the data;
  5. merge it: the weights keep exactly the stage's mask.

N:M cannot be reached gradually: every stage prunes at the full N:M. Mixed N:M likewise: each layer's N_l comes
from RMI on the dense model (stage 1, half-width one step of N) and every stage prunes that layer at N_l:M. Later
RMI rounds could not move them: a pruned weight never comes back, so no layer could take a larger N_l.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from safetensors.torch import save_file

from ...allocation import mixed_rates, rates_of_n
from ...allocation.rmi import feature_positions, layer_features, layer_importance, rmi_sparsity, similarity_matrix
from ...checkpoints import RunCheckpoint, rng_state, set_rng_state
from ...engine import OperatorResult, PruneResult
from ...errors import UsageError
from ...layerwise import prune_layerwise
from ...models.adapters import get_adapter
from ...resources import peak_bytes
from .config import LosaConfig
from .data import load_documents, training_windows
from .model import LosaAdapters
from .ranks import allocate_ranks, reconstruction_error
from .schedule import cubic_sparsity, stage_mean_rank
from .train import finetune


@dataclasses.dataclass
class LosaResult(PruneResult):
    """PruneResult plus what each stage did (`details`), and, for an unmerged dense adapter, the factors."""

    details: dict = dataclasses.field(default_factory=dict)
    adapters: LosaAdapters | None = None

    def before_save(self, model, directory) -> dict | None:
        """An unmerged (dense) adapter cannot go into the sparse weights: unwrap the model so the sparse
        base saves as a plain model, and write the factors beside it."""
        if self.adapters is None:
            return None
        if self.adapters.attached:  # the first save unwraps; later saves write the same factors again
            self.adapters.detach(merge=False)
        save_file(self.adapters.state_dict(), str(directory / "lora_adapters.safetensors"))
        return {"lora_adapters": "lora_adapters.safetensors", "scaling": self.adapters.scaling,
                "note": "dense LoRA left unmerged: the saved model is the sparse base; ppl was measured with "
                        "W x + scaling * B A x"}


def _peak_memory_mb(device) -> float:
    return peak_bytes(device) / 2**20


def losa(model, config: LosaConfig, calib: torch.Tensor, tokenizer, *, device="cpu", batch_size: int = 8,
         progress: bool = True, checkpoint_dir=None) -> LosaResult:
    """Run LoSA on `model` in place (see the module docstring); returns the final operators and per-stage details.
    With `checkpoint_dir`, the state after every stage but the last is saved there and a rerun of the same run
    resumes after the last finished stage, bit-identical to an uninterrupted run."""
    if tokenizer is None:
        raise UsageError("LoSA fine-tunes the model: pass the tokenizer (prunekit.prune(..., tokenizer=tok))")
    adapter = get_adapter(model)
    layers = adapter.layers()
    L, T = len(layers), config.stages
    sizes = [sum(op.weight.numel() for _, op in adapter.linears(layer)) for layer in layers]
    unstructured = not config.pattern.is_nm

    documents, source = load_documents(config.train_data)
    per_stage = -(-config.train_tokens // (config.train_seqlen * T))  # windows per stage
    bos = tokenizer.bos_token_id if adapter.needs_bos else None
    torch.manual_seed(config.train_seed)  # LoRA initialisation
    windows, available = training_windows(tokenizer, documents, config.train_seqlen, per_stage * T,
                                          config.train_seed, bos)
    positions = feature_positions(calib, config.feature_windows, config.rmi_tokens, config.train_seed)
    adapters = LosaAdapters(model, scaling=config.alpha / config.rank, masked=config.adapter == "masked")
    result = LosaResult(timings={"calibration": 0.0, "pruning": 0.0, "rmi": 0.0, "training": 0.0})
    result.details = {"train_data": source, "train_windows_available": available, "train_windows": len(windows),
                      "train_seqlen": config.train_seqlen, "stages": []}
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    checkpoint = RunCheckpoint(checkpoint_dir, config, calib, model) if checkpoint_dir else None
    dense, last, first = None, None, 1
    if checkpoint and (saved := checkpoint.read("losa_stage.pt")) is not None:
        dense, last, first = saved["dense"], PruneResult(), saved["stage"] + 1
        last.resume(saved["last"])
        model.load_state_dict(saved["model"])
        adapters.factors, result.timings, result.details = saved["factors"], saved["timings"], saved["details"]
        set_rng_state(saved["rng"])
        del saved  # the restored weights live in the model now
    for t in range(first, T + 1):
        stage: dict = {"stage": t}
        target = cubic_sparsity(t, T, config.sparsity) if unstructured else config.sparsity
        stage["sparsity"] = target

        # 1. RMI rates (and, at stage 1, the dense reference for the reconstruction errors)
        t0 = time.perf_counter()
        features = layer_features(model, calib, positions, device, batch_size)
        if dense is None:
            dense = features
        rates = None
        if config.rmi and unstructured:
            S = similarity_matrix(features, config.rmi_kernel)
            importance = layer_importance(S)
            current = [sum(int((op.weight == 0).sum()) for _, op in adapter.linears(layer)) / size
                       for layer, size in zip(layers, sizes)]
            rates = rmi_sparsity(importance, sizes, target, config.delta(target), current)
            stage["importance"] = importance.tolist()
        elif config.pattern.mixed:
            if t == 1:  # the dense model's RMI fixes every layer's N_l for all stages (module docstring)
                importance = layer_importance(similarity_matrix(features, config.rmi_kernel))
                continuous = rmi_sparsity(importance, sizes, target, config.delta(target))
                _, result.details["mixed"] = mixed_rates(continuous, sizes, config.pattern)
                stage["importance"] = importance.tolist()
            rates = rates_of_n(result.details["mixed"]["N"], config.pattern)  # also after a resume
        del features
        stage["seconds_rmi"] = time.perf_counter() - t0
        result.timings["rmi"] += stage["seconds_rmi"]

        # 2. prune the merged weights; for the output-error ranks keep each pruned layer's output at the feature positions
        sparse: list = [None] * L

        def keep(index, hidden):
            sparse[index] = hidden[positions].float().clone()

        t0 = time.perf_counter()
        last = prune_layerwise(model, config.base_config(target), calib, device=device, batch_size=batch_size,
                               progress=progress, layer_sparsity=rates,
                               on_layer_done=keep if config.rank_error == "output" else None)
        stage["seconds_prune"] = time.perf_counter() - t0
        for key in ("calibration", "pruning"):
            result.timings[key] += last.timings[key]
        stage["layer_sparsity"] = rates if rates is not None else [target] * L

        # 3. ranks from the reconstruction errors (Eq. 7) around the stage's average rank (Eq. 9)
        if config.rank_error == "local":
            errors = layer_operator_errors(last.operators, [len(adapter.linears(layer)) for layer in layers])
        else:
            errors = [reconstruction_error(d, s) for d, s in zip(dense, sparse)]
        if config.rank_allocation:
            ranks = allocate_ranks(errors, stage_mean_rank(t, T, config.rank), config.min_rank, config.max_rank)
        else:
            ranks = [config.rank] * L
        stage["recon_error"], stage["ranks"] = errors, ranks

        # 4. fine-tune the (masked) LoRA on this stage's windows, 5. merge
        model.to(device)
        adapters.attach(ranks)
        chunk = windows[(t - 1) * per_stage: t * per_stage]
        stage["train"] = finetune(model, adapters.parameters(), chunk, lr=config.lr,
                                  batch_size=config.train_batch_size, device=device, progress=progress,
                                  desc=f"LoSA stage {t}/{T} fine-tuning")
        result.timings["training"] += stage["train"]["seconds"]
        if config.adapter == "masked":
            stage["mask_check"] = adapters.detach(merge=True)
            if stage["mask_check"]["nonzero_outside_mask"]:
                raise RuntimeError(f"LoSA stage {t}: the merge wrote outside the mask ({stage['mask_check']})")
        stage["peak_memory_mb"] = _peak_memory_mb(device)
        result.details["stages"].append(stage)
        if checkpoint and t < T:  # the masked adapter is merged and detached: the model is plain again
            checkpoint.write("losa_stage.pt", {
                "stage": t, "model": model.state_dict(), "factors": adapters.factors, "dense": dense,
                "last": last.progress(), "timings": result.timings,
                "details": result.details, "rng": rng_state()})

    result.operators = _final_operators(model, adapter, last)
    if config.adapter == "dense":
        result.adapters = adapters
    else:
        result.details["mask_check"] = stage["mask_check"]
    result.details["peak_memory_mb"] = _peak_memory_mb(device)
    return result


def layer_operator_errors(operators: list[OperatorResult], counts: list[int]) -> list[float]:
    """Per layer, the mean relative reconstruction error ||WX − ŴX||² / ||WX||² of its operators (in the
    engine's order: `counts[l]` operators for layer l), each on its own calibration inputs."""
    errors, start = [], 0
    for count in counts:
        errors.append(sum(op.recon_error for op in operators[start:start + count]) / count)
        start += count
    return errors


def _final_operators(model, adapter, last: PruneResult) -> list[OperatorResult]:
    """The last pruning's operator records, with the sparsity re-read from the final weights."""
    ops = []
    records = iter(last.operators)
    for index, layer in enumerate(adapter.layers()):
        for name, op in adapter.linears(layer):
            record = next(records)
            weight = op.base.weight if hasattr(op, "base") else op.weight
            ops.append(dataclasses.replace(record, sparsity=(weight == 0).float().mean().item()))
    return ops



def finetune_pruned(model, config: LosaConfig, tokenizer, *, device="cpu", progress: bool = True) -> LosaResult:
    """`prunekit finetune`: fine-tune an already pruned model with the mask-aligned LoRA (masks = its
    current zeros, every layer at rank r̄, the whole token budget in one stage) and merge it; with
    `adapter="dense"`, plain LoRA left unmerged. No dense model is at hand, so no RMI or rank allocation."""
    adapter = get_adapter(model)
    layers = adapter.layers()
    documents, source = load_documents(config.train_data)
    count = -(-config.train_tokens // config.train_seqlen)
    bos = tokenizer.bos_token_id if adapter.needs_bos else None
    torch.manual_seed(config.train_seed)
    windows, available = training_windows(tokenizer, documents, config.train_seqlen, count, config.train_seed, bos)
    adapters = LosaAdapters(model, scaling=config.alpha / config.rank, masked=config.adapter == "masked")
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device)
    adapters.attach([config.rank] * len(layers))
    train = finetune(model, adapters.parameters(), windows, lr=config.lr, batch_size=config.train_batch_size,
                     device=device, progress=progress)
    result = LosaResult(timings={"training": train["seconds"]})
    result.details = {"train_data": source, "train_windows_available": available, "train_windows": len(windows),
                      "train_seqlen": config.train_seqlen, "train": train}
    if config.adapter == "masked":
        result.details["mask_check"] = adapters.detach(merge=True)
        if result.details["mask_check"]["nonzero_outside_mask"]:
            raise RuntimeError(f"the merge wrote outside the mask ({result.details['mask_check']})")
    else:
        result.adapters = adapters
    for index, layer in enumerate(layers):
        for name, op in adapter.linears(layer):
            W = op.base.weight if hasattr(op, "base") else op.weight
            result.operators.append(OperatorResult(f"{adapter.layer_prefix(index)}.{name}", tuple(W.shape),
                                                   (W == 0).float().mean().item(), float("nan"), 0.0))
    result.details["peak_memory_mb"] = _peak_memory_mb(device)
    return result
