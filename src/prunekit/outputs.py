"""Outputs appear whole or not at all: everything is written into a temporary sibling directory,
which is renamed to the requested name only when the run has succeeded. Missing parent folders are
created (and removed again if the run fails and they are still empty)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UsageError


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of `path` that exists (the folder its missing parents would be created in)."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output path, or a UsageError if it cannot be created (checked before any long work).
    Missing parent folders are fine: they are created when the output is written."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"output {path} already exists: choose a new path or pass --overwrite")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UsageError(f"cannot write output {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {path}: folder {ancestor} is not writable")
    return path


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parents of `path`; return the ones created, outermost first."""
    created = []
    for parent in reversed(path.parents):
        if not parent.exists():
            try:
                parent.mkdir()
            except OSError as err:
                _remove_if_empty(created)
                raise UsageError(f"cannot write output {path}: cannot create {parent} ({err.strerror})") from err
            created.append(parent)
    return created


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (something else was written there meanwhile): leave it
            return


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside `path`; on success it replaces `path`, on failure it is removed."""
    path = check_output_dir(path, overwrite)
    created = _make_parents(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    except OSError as err:
        _remove_if_empty(created)
        raise UsageError(f"cannot write output {path}: {err.strerror}") from err
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700): the output gets the user's usual mode
    succeeded = False
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
        succeeded = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not succeeded:
            _remove_if_empty(created)


def check_output_file(path: str | os.PathLike) -> Path:
    """A file path whose directory exists and is writable, or a UsageError (checked before any long work)."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: directory {path.parent} does not exist or is not writable")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`: readers never see half a file."""
    path = check_output_file(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: the file gets the user's usual mode
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_finite_weights(model: torch.nn.Module) -> None:
    """A UsageError if any parameter or buffer holds NaN/Inf: such a model is never saved."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UsageError(f"the result has NaN/Inf values in {len(bad)} of {len(tensors)} tensors (first: {bad[0]}): "
                         "nothing saved; lower the learning rate or check the method's options")
