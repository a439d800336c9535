"""How RotPruner attaches to a model: make it rotation-invariant, learn Q, fuse Q, prune with the base pruner.

The result is an ordinary Hugging Face model of the same architecture (its head untied from the
input embeddings, since the final norm's scale is folded into the head): `save_pretrained` and
`AutoModelForCausalLM.from_pretrained` need nothing from prunekit. With residual rotations the learned A_g are
fused into their blocks' operators after Q, and the products n(h) A_g and o_b A_gᵀ installed before the base
pruner runs (it then sees each block's rotated weights and inputs); such a model reloads through prunekit
(rotation/residual.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...checkpoints import RunCheckpoint
from ...engine import PruneResult
from ...layerwise import prune_layerwise
from ...models.adapters import get_adapter
from ...rotation import make_rotation_invariant, orthonormality_error, residual, rotate_model
from .train import dense_teacher, learn_rotation


def rotprune(model, config, calib: torch.Tensor, *, device="cpu", batch_size: int = 8, progress: bool = True,
             checkpoint_dir=None) -> PruneResult:
    """RotPruner on `model` in place; `calib` [nsamples, seqlen] token windows. With `checkpoint_dir`,
    the learned Q is saved there (`rotation.pt`) and reused by a rerun of the same run (prunekit.checkpoints);
    the base pruner's pass then resumes layer by layer from `checkpoint_dir/base`."""
    adapter = get_adapter(model)
    t0 = time.perf_counter()
    checkpoint = RunCheckpoint(checkpoint_dir, config, calib, model) if checkpoint_dir else None
    stream = make_rotation_invariant(model)
    kinds = residual.kinds_of(config.residual_rotations)
    blocks = residual.blocks(model, kinds, config.share_every) if kinds else []
    base = config.base_config()
    windows = calib[: config.train_samples or calib.shape[0]]
    windows = windows[:, : config.train_seqlen or windows.shape[1]]

    saved = checkpoint.read("rotation.pt") if checkpoint else None
    if saved is None:
        t_teacher = time.perf_counter()
        teacher = dense_teacher(model, adapter, stream, windows, base, device, batch_size, progress)
        teacher_seconds = time.perf_counter() - t_teacher
        rotation, residuals, log = learn_rotation(model, adapter, stream, windows, teacher, config, device, progress,
                                                  blocks)
        log.teacher_seconds = teacher_seconds
        del teacher
        Q, training = rotation.matrix().detach().cpu(), log.summary()
        A = {g: r.matrix().detach().cpu() for g, r in residuals.items()}
        if checkpoint:
            checkpoint.write("rotation.pt", {"Q": Q, "training": training, **({"A": A} if A else {})})
    else:
        Q, training, A = saved["Q"], saved["training"], saved.get("A", {})
    rotate_model(model, Q, stream)
    if blocks:
        residual.fuse(model, blocks, A)
        residual.install(model, A, kinds, config.share_every)
    rotation_seconds = time.perf_counter() - t0

    engine_dir = Path(checkpoint_dir) / "base" if checkpoint_dir else None
    result = prune_layerwise(model, base, calib, device=device, batch_size=batch_size, progress=progress,
                             checkpoint_dir=engine_dir)
    result.timings["rotation"] = rotation_seconds
    result.details["rotpruner"] = {
        "base_pruner": config.base_pruner,
        "training": training,
        "orthonormality_error": orthonormality_error(Q),
        "distance_from_identity": float((Q - torch.eye(Q.shape[0], dtype=Q.dtype)).norm()),
        "head_untied": True,
    }
    if blocks:
        eye = torch.eye(Q.shape[0], dtype=Q.dtype)
        result.details["rotpruner"]["residual_rotations"] = {
            "kinds": list(kinds), "share_every": config.share_every, "groups": len(A), "blocks": len(blocks),
            "parameters": sum(Ag.numel() for Ag in A.values()),  # buffers: not in report.json's "parameters"
            "orthonormality_error": max(orthonormality_error(Ag) for Ag in A.values()),
            "distance_from_identity": {g: float((Ag - eye).norm()) for g, Ag in A.items()},
        }
    return result
