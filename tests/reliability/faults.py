"""Fault injection for the reliability suite: run `prunekit ARGV` in this process and break it on purpose.

    python faults.py kill N -- ARGV...       SIGKILL this process at the N-th MLP forward (a random point
                                            inside some layer's work: every method runs each layer's MLP)
    python faults.py hold N DIR -- ARGV...   at the N-th MLP forward, create DIR/reached and wait for DIR/go
    python faults.py disk-full -- ARGV...    the model file's write fails half-way with ENOSPC

`count_mlp_calls()` counts the same events in-process, to choose N inside a run.
The injection patches only classes of transformers' Llama, never prunekit: the code under test is the
code users run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from pathlib import Path


def _patch_mlp(on_call) -> contextlib.AbstractContextManager:
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaMLP.forward

    def forward(self, *args, **kwargs):
        on_call()
        return original(self, *args, **kwargs)

    @contextlib.contextmanager
    def patched():
        modeling_llama.LlamaMLP.forward = forward
        try:
            yield
        finally:
            modeling_llama.LlamaMLP.forward = original

    return patched()


@contextlib.contextmanager
def count_mlp_calls():
    """Yields a one-item list that holds the number of MLP forwards run inside the block."""
    count = [0]

    def on_call():
        count[0] += 1

    with _patch_mlp(on_call):
        yield count


def _at_call(n: int, action):
    count = [0]

    def on_call():
        count[0] += 1
        if count[0] == n:
            action()

    return _patch_mlp(on_call)


def _disk_full():
    from transformers import modeling_utils

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 4096)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    modeling_utils.safe_save_file = save_file
    return contextlib.nullcontext()


def main(argv: list[str]) -> int:
    split = argv.index("--")
    mode, options, prunekit_argv = argv[0], argv[1:split], argv[split + 1:]
    if mode == "kill":
        injected = _at_call(int(options[0]), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif mode == "hold":
        folder = Path(options[1])

        def hold():
            (folder / "reached").touch()
            while not (folder / "go").exists():
                time.sleep(0.05)

        injected = _at_call(int(options[0]), hold)
    elif mode == "disk-full":
        injected = _disk_full()
    else:
        raise SystemExit(f"unknown fault {mode!r}")
    from prunekit.cli import main as prunekit_main

    with injected:
        return prunekit_main(prunekit_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
