"""Outputs appear whole or not at all, and nothing of the user's is lost.

Everything is written into a temporary sibling directory, renamed to the requested name only when the run
has succeeded. The output is claimed at the start by a lock file beside it (`.NAME.lock`, holding the run's
process id): a second run into the same output refuses, and temporary folders left by a killed run are
removed by the next one. Without --overwrite an output is never deleted; with it, only a prunekit output
(a folder with report.json) or an empty folder is replaced. Missing parent folders are created (and removed
again if the run fails and they are still empty)."""

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


def _replaceable(path: Path, overwrite: bool) -> bool:
    """Whether the run may put its result at `path`: nothing there, an empty folder, or (with --overwrite) a
    folder that prunekit wrote (it holds report.json)."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or (overwrite and (path / "report.json").is_file())


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output path, or a UsageError if it cannot be created (checked before any long work).
    Missing parent folders are fine: they are created when the output is written."""
    path = Path(path).expanduser().absolute()
    if not _replaceable(path, overwrite):
        if overwrite:
            raise UsageError(f"--overwrite replaces only a prunekit output (a folder with report.json), and {path} "
                             "holds other files: choose a new path or remove it yourself")
        raise UsageError(f"output {path} already exists: choose a new path or pass --overwrite")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UsageError(f"cannot write output {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {path}: folder {ancestor} is not writable")
    return path


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A usable --checkpoint-dir (a folder, or a path one can be created at), or a UsageError before any work."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--checkpoint-dir {path} is a file, not a folder: name a folder")
    ancestor = path if path.exists() else _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UsageError(f"cannot use --checkpoint-dir {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot use --checkpoint-dir {path}: folder {ancestor} is not writable")
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


def _apply_umask(folder: Path) -> None:
    """Give `folder` and everything in it the user's usual modes: mkdtemp makes the folder 0700, and some writers
    (safetensors) create their files 0600."""
    mask = _umask()
    for item in [folder, *folder.rglob("*")]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (something else was written there meanwhile): leave it
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _claim(path: Path) -> Path:
    """Create the lock file of `path` (O_EXCL), taking over a stale one whose process is gone, and remove the
    temporary folders such a killed run left; a UsageError if a live run holds it."""
    lock = path.parent / f".{path.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise UsageError(f"another prunekit run (process {pid}) is writing {path}: wait for it or choose "
                                 "another --output") from None
            lock.unlink(missing_ok=True)  # stale: its run was killed
            continue
        except OSError as err:
            raise UsageError(f"cannot write output {path}: {err.strerror}") from err
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed run into this output
            shutil.rmtree(stale, ignore_errors=True)
        return lock
    raise UsageError(f"cannot claim output {path}: its lock file {lock} keeps reappearing")


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside `path`; on success it replaces `path`, on failure it is removed.

    If something that may not be replaced appeared at `path` during the run, it is left alone and the result
    is kept beside it (`NAME.prunekit-PID`), named in the error."""
    path = check_output_dir(path, overwrite)
    created = _make_parents(path)
    try:
        lock = _claim(path)
    except BaseException:
        _remove_if_empty(created)
        raise
    tmp = None
    succeeded = False
    try:
        try:
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        except OSError as err:
            raise UsageError(f"cannot write output {path}: {err.strerror}") from err
        yield tmp
        if not _replaceable(path, overwrite):
            kept = path.with_name(f"{path.name}.prunekit-{os.getpid()}")
            os.replace(tmp, kept)
            succeeded = True
            raise UsageError(f"{path} appeared during the run and was left alone: the result is in {kept}")
        with writing(path):
            _apply_umask(tmp)
            if path.exists():
                shutil.rmtree(path)  # an empty folder, or (--overwrite) a prunekit output
            os.replace(tmp, path)
        succeeded = True
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        lock.unlink(missing_ok=True)
        if not succeeded:
            _remove_if_empty(created)


@contextmanager
def writing(path: str | os.PathLike, hint: str = ""):
    """Writes of a result: a failing disk (full, read-only, over quota) ends in one line naming the output,
    not a traceback; the temporary folder is then removed by atomic_output_dir, so nothing half-written stays."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"could not write the result to {path} ({err.strerror or err}): nothing saved{hint}") from err


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


def _checkable(t: torch.Tensor) -> torch.Tensor:
    """FP8 tensors have no isfinite kernel: check them widened (E4M3's NaN stays NaN)."""
    return t.float() if t.element_size() == 1 else t


def check_finite_weights(model: torch.nn.Module) -> None:
    """A UsageError if any parameter or buffer holds NaN/Inf: such a model is never saved."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    bad = [name for name, t in tensors.items()  # a streamed model's layers (meta) were checked as they were written
           if t.is_floating_point() and not t.is_meta and not torch.isfinite(_checkable(t)).all()]
    if bad:
        raise UsageError(f"the result has NaN/Inf values in {len(bad)} of {len(tensors)} tensors (first: {bad[0]}): "
                         "nothing saved; lower the learning rate or check the method's options")
