"""How SliceGPT and RotPruner-structured attach to a model: fold norms → PCA bases → (learn) → slice."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...checkpoints import RunCheckpoint
from ...engine import OFFLOAD, PruneResult
from ...rotation import make_rotation_invariant, orthonormality_error
from .layers import (check_sliceable, dense_tensors, is_sliced, load_sliced, parameter_count, restructure,
                     sliced_parts, tied_scale)
from .config import RotPrunerStructuredConfig
from .pca import pca_bases, sliced_width
from .train import learn_bases


@dataclass
class SlicedResult(PruneResult):
    """A PruneResult whose achieved sparsity is the fraction of parameters removed."""

    parameters_before: int = 0
    parameters_after: int = 0

    @property
    def achieved_sparsity(self) -> float:
        return 1.0 - self.parameters_after / self.parameters_before if self.parameters_before else 0.0


def slicegpt(model, config, calib: torch.Tensor, *, device="cpu", batch_size: int = 8, progress: bool = True,
             checkpoint_dir=None, **_) -> SlicedResult:
    """SliceGPT (or RotPruner-structured: the bases are then learned) on `model` in place. With `checkpoint_dir`,
    the PCA bases and then the learned bases are saved there, and a rerun of the same run starts after the last."""
    check_sliceable(model)
    checkpoint = RunCheckpoint(checkpoint_dir, config, calib, model) if checkpoint_dir else None
    result = SlicedResult(parameters_before=parameter_count(model))
    t0 = time.perf_counter()
    g = tied_scale(model) if config.keep_tied else None
    make_rotation_invariant(model)
    d = model.config.hidden_size
    k = sliced_width(d, config.slicing, config.round_to)
    shared = config.shared_layer_basis
    saved = checkpoint.read("pca_bases.pt") if checkpoint else None
    bases = saved or pca_bases(model, calib, k, device, batch_size, progress, shared=shared)
    if checkpoint and saved is None:
        checkpoint.write("pca_bases.pt", bases)
    result.timings["calibration"] = time.perf_counter() - t0
    details = {"hidden_size": d, "kept": k, "slicing_target": config.slicing, "slicing_achieved": 1 - k / d,
               "tied_embeddings_kept": g is not None, "shared_layer_basis": shared}
    dense = dense_tensors(model)
    if isinstance(config, RotPrunerStructuredConfig):
        t1 = time.perf_counter()
        pca = bases
        learned = checkpoint.read("learned_bases.pt") if checkpoint else None
        if learned is None:
            bases, log = learn_bases(model, dense, bases, calib, config, device, progress, g)  # restructures the model
            learned = {"bases": bases, "training": log.summary()}
            if checkpoint:
                checkpoint.write("learned_bases.pt", learned)
        bases = learned["bases"]
        result.timings["training"] = time.perf_counter() - t1
        details["training"] = learned["training"]
        details["max_orthonormality_error"] = max(orthonormality_error(U) for U in bases)
        details["max_distance_from_pca"] = max(float((U.double() - P.double().to(U.device)).norm())
                                               for U, P in zip(bases, pca))  # Frobenius, per basis
    t1 = time.perf_counter()
    model.to(OFFLOAD)
    bases = [U.detach().to(device, torch.float64) for U in bases]
    if not is_sliced(model):
        restructure(model, [U.shape[1] for U in bases], tied=g is not None, shared=shared)
    for part in sliced_parts(model, dense, bases, tied_scale=g):  # the fusion in float64 on the device, a layer at a time
        load_sliced(model, part)
    details["format"] = model.config.prunekit_sliced
    result.timings["pruning"] = time.perf_counter() - t1
    result.parameters_after = parameter_count(model)
    details["parameters_before"], details["parameters_after"] = result.parameters_before, result.parameters_after
    result.details[config.method] = details
    return result
