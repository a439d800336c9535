"""Outputs appear whole or not at all: everything is written into a temporary sibling directory,
which is renamed to the requested name only when the run has succeeded."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output path, or a UsageError if it cannot be created (checked before any long work)."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"output {path} already exists: choose a new path or pass --overwrite")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write output {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {path}: directory {parent} is not writable")
    return path


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside `path`; on success it replaces `path`, on failure it is removed."""
    path = check_output_dir(path, overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    except OSError as err:
        raise UsageError(f"cannot write output {path}: {err.strerror}") from err
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
