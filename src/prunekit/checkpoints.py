"""Resumable runs: a --checkpoint-dir holds files that only the same run may read back.

Every file a method writes there goes through `RunCheckpoint.write` (atomic: a temporary file renamed into
place, so a kill leaves the previous version) and is listed with its size in the folder's manifest, beside
the run's fingerprint in four parts — the model (name, shape, dtype and a strided sample of every tensor),
its dtype, the method config and the calibration windows. Opening the folder refuses another run's progress
naming the parts that differ, and a missing, truncated or unreadable file with the hint to delete the
folder: neither is ever silently ignored or reused.

What each method saves, and so where a killed run resumes:
  layer-wise pruners (magnitude, wanda, sparsegpt, fista): after every decoder layer (prunekit.engine);
  rotpruner: the learned rotation, then every layer of the base pruner's pass (`base/`);
  losa: after every stage (merged weights, LoRA factors, RNG state);
  slicegpt / rotpruner-structured: the PCA bases, then the learned bases.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UsageError
from .streaming import layer_store


MANIFEST = "checkpoint.json"


class RunCheckpoint:
    """The checkpoint folder of one run (see the module docstring). Its manifest, `checkpoint.json`, holds the
    run's fingerprint and, per saved name, the file that holds it and its size; opening the folder checks both,
    so another run's progress or a truncated or missing file is refused at once. Every write goes to a new file
    (`progress.7.pt`), then the manifest is switched to it, then the old file is removed: a kill at any point
    leaves the manifest naming complete files. `extra` adds to the config part (e.g. per-layer sparsities
    that are not in the config)."""

    def __init__(self, directory, config, calib_ids: torch.Tensor, model: nn.Module, extra: str = ""):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot use --checkpoint-dir {self.dir}: {err.strerror}") from err
        self.parts = {"model": model_fingerprint(model), "dtype": str(next(model.parameters()).dtype),
                      "method config": _digest((repr(config) + extra).encode()),
                      "calibration data": _digest(calib_ids.cpu().numpy().tobytes())}
        manifest = _read_manifest(self.dir)
        if manifest is None:
            if any(self.dir.glob("*.pt")):
                raise UsageError(f"--checkpoint-dir {self.dir} holds files without a {MANIFEST} (another program, or "
                                 f"an older prunekit): delete {self.dir} to start fresh, or use another folder")
            manifest = {"parts": self.parts, "files": {}, "next": 0}
        _check(self.dir, manifest, self.parts)
        self.files, self.next = manifest["files"], manifest.get("next", 0)
        self._write_manifest()
        kept = {entry["file"] for entry in self.files.values()}
        for path in [*self.dir.glob("*.pt"), *self.dir.glob("*.tmp")]:  # what a killed write left behind
            if path.name not in kept:
                path.unlink(missing_ok=True)

    def read(self, name: str):
        """What this run saved under `name` (tensors on the CPU), or None if it has not saved it yet."""
        if name not in self.files:
            return None
        path = self.dir / self.files[name]["file"]
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # garbage of the right size: whatever torch.load raises
            raise UsageError(f"checkpoint file {path} is unreadable ({type(err).__name__}): delete {self.dir} "
                             "to start fresh") from err

    def write(self, name: str, state) -> None:
        """Save `state` under `name`: a new file, then the manifest pointing at it, then the old file removed."""
        stem, _, suffix = name.rpartition(".")
        path = self.dir / f"{stem}.{self.next}.{suffix}"
        self.next += 1
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        old = self.files.get(name)
        self.files[name] = {"file": path.name, "size": path.stat().st_size}
        self._write_manifest()
        if old is not None and old["file"] != path.name:
            (self.dir / old["file"]).unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        manifest = self.dir / MANIFEST
        tmp = manifest.with_name(MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"parts": self.parts, "files": self.files, "next": self.next}, indent=1))
        os.replace(tmp, manifest)


def checkpoint_file(directory, name: str) -> Path | None:
    """The file that holds what was saved under `name` in the checkpoint folder `directory` (None: nothing)."""
    manifest = _read_manifest(Path(directory))
    entry = (manifest or {"files": {}})["files"].get(name)
    return Path(directory) / entry["file"] if entry else None


def check_resumable(directory, config, calib_ids: torch.Tensor, model: nn.Module) -> None:
    """Before any long work: a --checkpoint-dir written by another run, or with a missing or truncated file,
    is a UsageError now rather than after the dense evaluation. Sub-folders (a later pass over a changed
    model, e.g. RotPruner's pruning pass after its rotation) are checked for their files, dtype and data."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    RunCheckpoint(directory, config, calib_ids, model)
    top = {"dtype": str(next(model.parameters()).dtype), "calibration data": _digest(calib_ids.cpu().numpy().tobytes())}
    for manifest_path in directory.rglob(f"*/{MANIFEST}"):
        _check(manifest_path.parent, _read_manifest(manifest_path.parent), top)


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest.get("files")
        if isinstance(manifest.get("parts"), dict) and isinstance(files, dict) and all(
                isinstance(entry, dict) and {"file", "size"} <= entry.keys() for entry in files.values()):
            return manifest
    except (ValueError, AttributeError, OSError):
        pass
    raise UsageError(f"checkpoint manifest {path} is damaged: delete {directory} to start fresh")


def _check(directory: Path, manifest: dict, parts: dict) -> None:
    differ = [part for part, value in parts.items() if manifest["parts"].get(part) != value]
    if differ:
        raise UsageError(f"--checkpoint-dir {directory} holds the progress of another run (its {', '.join(differ)} "
                         f"differ from this run's): use another --checkpoint-dir, or delete {directory} to start fresh")
    for entry in manifest["files"].values():
        path, size = directory / entry["file"], entry["size"]
        found = path.stat().st_size if path.is_file() else None
        if found != size:
            state = "is missing" if found is None else f"is truncated or changed ({found} of {size} bytes)"
            raise UsageError(f"checkpoint file {path} {state}: delete {directory} to start fresh")


def rng_state() -> dict:
    """The global RNG states a resumed run must continue from to be bit-identical."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def model_fingerprint(model: nn.Module, samples: int = 4096) -> str:
    """A hash of every tensor's name, shape, dtype and `samples` values taken at a regular stride: cheap at any
    model size (no copy of a whole tensor), and different for models whose weights differ anywhere but in a
    few unsampled values."""
    h = hashlib.sha256()
    store = layer_store(model)  # a streamed model's layers are on disk: their files stand in for their values
    h.update(store.identity().encode() if store else b"")
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if flat.numel() and not flat.is_meta:
            h.update(flat[:: max(1, flat.numel() // samples)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
